"""Decontamination at merge: valid candidates whose question or solution overlaps an eval question, the
record of each overlap (merge/contaminated.jsonl), and stats.json's decontamination block.

The test itself is inputs/decontam.py; the merge stage builds its index from eval.benchmarks and passes it in.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..config import RunConfig
from ..inputs.decontam import Index
from ..rundir.atomic import atomic_write_text
from ..rundir.layout import RunDir

READ_COLUMNS = ["question_id", "question", "domain", "candidate_index", "text"]


def flag_candidates(
    table: pa.Table, valid: np.ndarray, shard: int, index: Index, cfg: RunConfig, out: list
) -> np.ndarray:
    """Per row, whether a valid candidate's question or solution overlaps an eval question; appends one record
    per (candidate, eval question) overlap to `out`.

    The question is tested as a seed is at launch (exact and n-gram), the solution by n-grams alone.
    """
    flagged = np.zeros(table.num_rows, bool)
    rows = np.flatnonzero(valid)
    if not len(rows):
        return flagged
    dropped = cfg.decontaminate.solutions  # recorded per overlap: whether it left the SFT set
    questions: dict[str, list] = {}  # a question repeats per candidate: tested once
    part = table.select(READ_COLUMNS).take(pa.array(rows))
    for row, record in zip(rows, part.to_pylist()):
        question = record["question"] or ""
        if question not in questions:
            questions[question] = [(m, "question") for m in index.matches(question)]
        found = questions[question] + [(m, "solution") for m in index.matches(record["text"] or "", exact=False)]
        if found:
            flagged[row] = True
            out += [
                {
                    "seed_id": record["question_id"],
                    "candidate_index": record["candidate_index"],
                    "shard": shard,
                    "domain": record["domain"] or "unknown",
                    "in": where,
                    **match.as_json(),
                    "dropped": dropped,
                }
                for match, where in found
            ]
    return flagged


def summary(records: list[dict], kept: pa.Table, index: Index, cfg: RunConfig, overall: dict) -> dict:
    """stats.json's decontamination block. `kept`: the candidates written to the SFT set; `overlapped` names the
    eval questions one of them overlaps, which the report leaves out of the clean subset."""
    written = set(zip(kept["question_id"].to_pylist(), kept["candidate_index"].to_pylist()))
    overlapped: dict[str, set] = {}
    for record in records:
        if (record["seed_id"], record["candidate_index"]) in written:
            overlapped.setdefault(record["benchmark"], set()).add(record["question_id"])
    return {
        "ngram": index.n,
        "solutions_dropped": cfg.decontaminate.solutions,
        "eval_questions": index.questions,
        "contaminated_seeds": overall.get("contaminated_seeds", 0),
        "overlapped": {bench: sorted(qids) for bench, qids in sorted(overlapped.items())},
        "list": "contaminated.jsonl",
    }


def write_list(path: Path, records: list[dict]) -> None:
    """merge/contaminated.jsonl: one JSON line per (candidate, eval question) overlap."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def seeds_dropped(run: RunDir) -> dict[str, int]:
    """Per domain, the seeds the launch dropped as contaminated (the run's seeds/contaminated.jsonl)."""
    top = getattr(run, "run", run)  # a round's seeds come from the launch's pool
    path = top.stage_dir("seeds") / "contaminated.jsonl"
    if not path.is_file():
        return {}
    domain_of = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            domain_of[record["seed_id"]] = record.get("domain") or "unknown"
    out: dict[str, int] = {}
    for domain in domain_of.values():
        out[domain] = out.get(domain, 0) + 1
    return out
