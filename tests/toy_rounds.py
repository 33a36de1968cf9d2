"""Toy stage bodies for multi-round runs: tests/toy_stages.py's, plus what the rounds read and write.

merge also writes the SFT set (one row per question, with its question_id) and merge/stats.json;
generate and train record the model they were given (inputs-<stage>.json in the round's folder).
TOY_ROUND_FAIL=<round>:<stage>:<index> fails that task of that round once. Used through
SVD_HPC_TEST_BODIES=tests.toy_rounds:BODIES; REAL_BUT_FAILING keeps every real body and only
injects the failure (tests.toy_rounds:REAL_BUT_FAILING).
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from svd_hpc.rundir.atomic import atomic_path, atomic_write_json
from svd_hpc.rundir.layout import RunDir
from svd_hpc.runner import plan
from tests import toy_stages


def _fail_once(stage: str, body):
    def wrapped(run: RunDir, index: int):
        number = getattr(run, "number", None)
        if os.environ.get("TOY_ROUND_FAIL") == f"{number}:{stage}:{index}":
            flag = run.root / f"toy-failed-{stage}-{index}"
            if not flag.exists():
                flag.parent.mkdir(parents=True, exist_ok=True)
                flag.touch()
                raise RuntimeError(f"toy failure of round {number} {stage} task {index}")
        return body(run, index)

    return wrapped


def _record_inputs(stage: str, body):
    def wrapped(run: RunDir, index: int):
        cfg = run.load_config()
        atomic_write_json(
            run.root / f"inputs-{stage}-{index}-{os.environ.get('RANK', '0')}.json",
            {
                "model": cfg.model.path,
                "train_model": cfg.train.model,
                "sft": str(run.stage_dir("merge") / "sft" / "train.parquet"),
            },
        )
        return body(run, index)

    return wrapped


def merge(run: RunDir, index: int) -> dict:
    stats = toy_stages.merge(run, index)
    table = pq.read_table(run.stage_dir("merge") / "merged.parquet")
    # keep the even-numbered questions: an SFT set that leaves some questions unsolved
    keep = [int(q.split()[2]) % 2 == 0 for q in table.column("question").to_pylist()]
    sft = table.filter(pa.array(keep)).select(["question_id", "question", "verify"])
    with atomic_path(run.stage_dir("merge") / "sft" / "train.parquet") as tmp:
        pq.write_table(sft, tmp)
    atomic_write_json(
        run.stage_dir("merge") / "stats.json", {"overall": {"candidates": table.num_rows, "kept": sft.num_rows}}
    )
    return stats


BODIES = {
    **toy_stages.BODIES,
    "generate": _record_inputs("generate", toy_stages.generate),
    "verify": _fail_once("verify", toy_stages.verify),
    "merge": merge,
    "train": _record_inputs("train", toy_stages.train),
}
BODIES.pop("report")  # the real report: it reads only what exists
REAL_BUT_FAILING = {"verify": _fail_once("verify", plan.import_spec(plan.BODIES["verify"]))}
ENV = {"SVD_HPC_TEST_BODIES": "tests.toy_rounds:BODIES"}
