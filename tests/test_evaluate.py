"""The eval stage: benchmark loading (local copies of every preset's layout, the error for an
unreachable hub), grading of hand-made answers, eval tasks end to end on real vLLM (CPU) with the
tiny random Qwen3 (it answers nonsense: these tests check formats, counts and that `correct`
comes from the grader), the UQ-TTC path, and one task through the local scheduler."""

import base64
import dataclasses
import json
import os
import pickle
import shutil
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from svd_hpc import config
from svd_hpc.config import BenchmarkSpec, ConfigError
from svd_hpc.eval import benchmarks, sandbox
from svd_hpc.eval.grade import grade, grade_all
from svd_hpc.eval.grading.choice import grade_choice
from svd_hpc.eval.grading.math import grade_math
from svd_hpc.eval.tasks import eval_tasks
from svd_hpc.inputs import models
from svd_hpc.records import EVAL
from svd_hpc.rundir.atomic import atomic_write_json
from svd_hpc.rundir.layout import RunDir
from svd_hpc.rundir.planfile import plan_to_json
from svd_hpc.runner import local
from svd_hpc.runner.plan import build_plan
from svd_hpc.sampling import prompts
from svd_hpc.sampling.cascade import CascadeResult
from svd_hpc.sampling.engine import Completion
from svd_hpc.stages import evaluate
from tests.conftest import run_eval

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data" / "eval_samples"
MATH = {"name": "math", "path": str(SAMPLES / "math.jsonl"), "id_field": "id"}
CHOICE = {
    "name": "choice",
    "path": str(SAMPLES / "choice.jsonl"),
    "id_field": "id",
    "grader": "choice",
    "domain": "science",
}
CODE = {
    "name": "code",
    "path": str(SAMPLES / "code.jsonl"),
    "id_field": "question_id",
    "question_field": "question_content",
    "grader": "code",
    "domain": "code",
}
TINY = {"path": "builtin:tiny-qwen3", "max_model_len": 1024, "block_size": 32, "thinking": "off"}


def prepare_run(tmp_path: Path, eval_settings: dict, name: str = "ev", **extra) -> RunDir:
    """A run directory as launch leaves it: resolved config and plan."""
    data = {
        "name": name,
        "model": TINY,
        "train": {"enabled": False},
        "generate": {"chunk_size": 3},
        "eval": {"max_tokens": 24, **eval_settings},
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = config.load(path)
    run = RunDir(tmp_path / name)
    run.write_config(cfg, meta={})
    atomic_write_json(run.plan_path, plan_to_json(build_plan(cfg)))
    return run


@pytest.fixture(scope="module")
def engine(tiny_engine):
    """The session's tiny engine as TINY configures it (thinking off), for this module's tests.

    Set here, not with a test's monkeypatch: tests here call monkeypatch.undo() mid-test.
    """
    tiny_engine.thinking = False
    yield tiny_engine
    tiny_engine.thinking = tiny_engine.template_knows_thinking  # model.thinking=auto again


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- benchmarks


def test_local_jsonl_and_parquet_give_the_same_problems(tmp_path):
    rows = read_jsonl(SAMPLES / "math.jsonl")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "math.parquet")
    from_jsonl = benchmarks.load(BenchmarkSpec(**MATH))
    from_parquet = benchmarks.load(BenchmarkSpec(**{**MATH, "path": str(tmp_path / "math.parquet")}))
    assert from_jsonl == from_parquet
    assert [p.question_id for p in from_jsonl] == [r["id"] for r in rows]
    assert from_jsonl[1].answer == "\\frac{1}{2}" and from_jsonl[1].present(0) == (rows[1]["question"], "\\frac{1}{2}")
    assert len(benchmarks.load(BenchmarkSpec(**MATH, limit=2))) == 2


def test_choice_options_shuffle_per_seed_and_keep_the_right_answer():
    problems = benchmarks.load(BenchmarkSpec(**CHOICE))
    rows = read_jsonl(SAMPLES / "choice.jsonl")
    orders = set()
    for problem, row in zip(problems, rows):
        for seed in range(4):
            shown, letter = problem.present(seed)
            assert shown == problem.present(seed)[0]  # fixed for (seed, question)
            lines = dict(line.split(") ", 1) for line in shown.splitlines() if line[:2] in ("A)", "B)", "C)", "D)"))
            assert lines[letter] == row["options"][row["answer"]]
            orders.add(shown)
    assert len(orders) > len(problems)  # seeds do change the order


def test_code_tests_are_read_from_livecodebench_fields(tmp_path):
    problems = {p.question_id: p for p in benchmarks.load(BenchmarkSpec(**CODE))}
    assert problems["code-max"].public_tests == [{"input": "3\n1 9 4\n", "output": "9\n"}]
    assert problems["code-max"].tests == [
        {"input": "1\n-7\n", "output": "-7\n"},
        {"input": "5\n3 3 3 3 3\n", "output": "3\n"},
    ]  # private ones were packed
    assert problems["code-maxsub"].mode == "functional" and problems["code-maxsub"].fn_name == "maxSubArray"
    # our SFT prompt shows the starter code or the stdin note; the authors' LiveCodeBench prompt neither
    assert "```python\nclass Solution:" in problems["code-maxsub"].present(0)[0]
    assert "standard input" in problems["code-sum"].present(0)[0]
    lcb = {p.question_id: p for p in benchmarks.load(BenchmarkSpec(**CODE, prompt="lcb"))}
    assert (
        lcb["code-maxsub"].present(0)[0]
        == lcb["code-maxsub"].question
        == read_jsonl(SAMPLES / "code.jsonl")[3]["question_content"]
    )
    # a packed payload that would build an object is refused, never run
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    row = read_jsonl(SAMPLES / "code.jsonl")[0]
    row["private_test_cases"] = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    (tmp_path / "evil.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match="row 0: test cases are neither JSON nor LiveCodeBench-packed"):
        benchmarks.load(BenchmarkSpec(**{**CODE, "path": str(tmp_path / "evil.jsonl")}))
    assert not marker.exists()


def test_presets_read_local_copies_in_the_hub_layouts(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # no hub, with or without a network here
    hle = [
        {
            "id": "h1",
            "question": "Pick the prime.\n\nAnswer Choices:\nA. 4\nB. 7\nC. 9",
            "answer": "B",
            "answer_type": "multipleChoice",
            "image": "",
        },
        {
            "id": "h2",
            "question": "Which holds?\n\nAnswer Choices:\nA. one\nline two\nB. three",
            "answer": "A",
            "answer_type": "multipleChoice",
            "image": "",
        },
        {
            "id": "h3",
            "question": "See the figure.\n\nAnswer Choices:\nA. x\nB. y",
            "answer": "A",
            "answer_type": "multipleChoice",
            "image": "data:image/png;base64,AAAA",
        },
        {"id": "h4", "question": "What is 2+2?", "answer": "4", "answer_type": "exactMatch", "image": ""},
        # options not in the "Answer Choices:" layout: kept, shown verbatim, counted
        {
            "id": "h5",
            "question": "Which is even?\n(A) 3 (B) 8",
            "answer": "B",
            "answer_type": "multipleChoice",
            "image": "",
        },
    ]
    pq.write_table(pa.Table.from_pylist(hle), tmp_path / "hle.parquet")
    problems, left_out = benchmarks.load_counted(
        BenchmarkSpec(name="hle", preset="hle_mc", path=str(tmp_path / "hle.parquet"))
    )
    assert [(p.question_id, p.stem, p.options, p.correct_index, p.domain) for p in problems] == [
        ("h1", "Pick the prime.", ["4", "7", "9"], 1, "science"),
        ("h2", "Which holds?", ["one\nline two", "three"], 0, "science"),
        ("h5", "Which is even?\n(A) 3 (B) 8", None, None, "science"),
    ]
    assert left_out == {"image": 1, "not_multiple_choice": 1, "options_unparsed": 1}
    # the authors' handling: the question verbatim, options in their original order, for every seed
    for seed in range(3):
        assert [p.present(seed) for p in problems] == [
            (hle[0]["question"], "B"),
            (hle[1]["question"], "A"),
            (hle[4]["question"], "B"),
        ]
    seeded = benchmarks.load(
        BenchmarkSpec(name="hle", preset="hle_mc", path=str(tmp_path / "hle.parquet"), option_order="seeded")
    )
    assert {seeded[0].present(s)[0] for s in range(8)} != {hle[0]["question"]}  # ours, as a knob
    assert seeded[2].present(5) == (hle[4]["question"], "B")  # unparsed options stay as they are

    (tmp_path / "gpqa.csv").write_text(
        "Record ID,Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
        "rec1,What is heavier?,lead,feathers,air,helium\n"
    )
    [gpqa] = benchmarks.load(BenchmarkSpec(name="gpqa", preset="gpqa_diamond", path=str(tmp_path / "gpqa.csv")))
    shown, letter = gpqa.present(3)
    assert gpqa.question_id == "rec1" and f"{letter}) lead" in shown

    # LiveCodeBench as the authors cut it: a release file set, then a contest-month window
    lcb = tmp_path / "lcb"
    lcb.mkdir()
    rows = {r["question_id"]: r for r in read_jsonl(SAMPLES / "code.jsonl")}
    files = {
        "test.jsonl": ["code-words"],
        "test4.jsonl": ["code-maxsub"],
        "test5.jsonl": ["code-sum"],
        "test6.jsonl": ["code-max"],
    }  # contest months 2023-05, 2025-01, 2024-09, 2025-02
    for n in range(1, 7):
        name = "test.jsonl" if n == 1 else f"test{n}.jsonl"
        (lcb / name).write_text("".join(json.dumps(rows[q]) + "\n" for q in files.get(name, [])))
    v5, v5_out = benchmarks.load_counted(BenchmarkSpec(name="v5", preset="lcb_v5", path=str(lcb)))
    v6 = benchmarks.load(BenchmarkSpec(name="v6", preset="lcb_v6", path=str(lcb)))
    assert [p.question_id for p in v5] == ["code-maxsub", "code-sum"] and v5_out["outside_contest_window"] == 1
    assert [p.question_id for p in v6] == ["code-maxsub", "code-max"]  # 2025-01 lies in both windows, as theirs
    wider = benchmarks.load(BenchmarkSpec(name="v5", preset="lcb_v5", path=str(lcb), contest_from="2023-01"))
    assert [p.question_id for p in wider] == ["code-words", "code-maxsub", "code-sum"]
    only_new = benchmarks.load(
        BenchmarkSpec(
            name="v6", preset="lcb_v6", path=str(lcb), hf_config="v6", contest_from="2000-01", contest_to="2099-12"
        )
    )
    assert [p.question_id for p in only_new] == ["code-max"]  # ours before: the problems new in test6.jsonl
    (lcb / "test2.jsonl").unlink()
    with pytest.raises(ValueError, match="lacks test2.jsonl for version release_v5"):
        benchmarks.load(BenchmarkSpec(name="v5", preset="lcb_v5", path=str(lcb)))


def test_presets_prefer_the_hub_and_fall_back_to_the_local_copy(tmp_path, monkeypatch):
    header = "Record ID,Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
    (tmp_path / "gpqa.csv").write_text(header + "local1,What is heavier?,lead,feathers,air,helium\n")
    spec = BenchmarkSpec(name="gpqa", preset="gpqa_diamond", path=str(tmp_path / "gpqa.csv"))
    hub_row = {
        "Record ID": "hub1",
        "Question": "Which is a metal?",
        "Correct Answer": "iron",
        "Incorrect Answer 1": "wood",
        "Incorrect Answer 2": "glass",
        "Incorrect Answer 3": "salt",
    }
    monkeypatch.setattr(benchmarks, "hub_unreachable", lambda: None)
    monkeypatch.setattr(benchmarks, "_read_hub", lambda src, left_out: [hub_row])
    assert [p.question_id for p in benchmarks.load(spec)] == ["hub1"]

    def gated(src, left_out):
        raise ConnectionError("401 Client Error: gated dataset")

    monkeypatch.setattr(benchmarks, "_read_hub", gated)
    assert [p.question_id for p in benchmarks.load(spec)] == ["local1"]


def test_unreachable_preset_says_what_was_tried(tmp_path, monkeypatch):
    # a closed local port stands in for an unreachable hub, with or without a network here
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError) as err:
        benchmarks.load(BenchmarkSpec(name="aime26", preset="aime26"))
    message = str(err.value)
    assert "benchmark 'aime26' cannot be loaded: no local copy is configured (path)" in message
    assert "MathArena/aime_2026" in message and "127.0.0.1 is unreachable" in message and "set path: DIR" in message
    with pytest.raises(ValueError) as err:
        benchmarks.load(BenchmarkSpec(name="gpqa", preset="gpqa_diamond", path=str(tmp_path / "gpqa.csv")))
    assert f"the local copy {tmp_path / 'gpqa.csv'} does not exist" in str(err.value)
    assert "Idavidrein/gpqa" in str(err.value) and "HF_TOKEN" in str(err.value)
    with pytest.raises(ConfigError, match="unknown preset 'aime2026'; presets: aime26"):
        benchmarks.load(BenchmarkSpec(name="x", preset="aime2026"))


def test_bad_benchmark_files_are_named(tmp_path):
    (tmp_path / "dup.jsonl").write_text(
        '{"id": 1, "question": "a", "answer": "1"}\n{"id": 1, "question": "b", "answer": "2"}\n'
    )
    with pytest.raises(ValueError, match=r"dup.jsonl row 1: question id '1' repeats row 0"):
        benchmarks.load(BenchmarkSpec(name="d", path=str(tmp_path / "dup.jsonl"), id_field="id"))
    with pytest.raises(ValueError, match="has no field 'problem' .*its fields are: id, question, answer"):
        benchmarks.load(BenchmarkSpec(name="d", path=str(tmp_path / "dup.jsonl"), question_field="problem"))
    with pytest.raises(ValueError, match="must be the correct option's index, letter or text"):
        (tmp_path / "c.jsonl").write_text('{"question": "q", "options": ["x", "y"], "answer": 5}\n')
        benchmarks.load(BenchmarkSpec(name="c", path=str(tmp_path / "c.jsonl"), grader="choice"))


def test_benchmark_dataset_folders_name_a_missing_split(tmp_path):
    """Seeds and benchmarks read dataset folders with one loader: a saved one and a plain folder of
    data files both name the split that is missing and the splits there are."""
    import datasets

    rows = {"question": ["1+1?"], "answer": ["2"]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(tmp_path / "saved")
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "train.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    for folder in ("saved", "files"):
        spec = BenchmarkSpec(name="b", path=str(tmp_path / folder), split="train")
        assert [p.answer for p in benchmarks.load(spec)] == ["2"]
        with pytest.raises(ValueError, match=rf"benchmark 'b': \S+/{folder} has no split 'test'; splits: train\."):
            benchmarks.load(dataclasses.replace(spec, split="test"))


# ----------------------------------------------------------------------------- grading


CODE_SOLUTIONS = {
    "code-sum": "a, b = map(int, input().split())\nprint(a + b)",
    "code-max": "input()\nprint(max(map(int, input().split())))",
    "code-words": "import sys\nlines = sys.stdin.read().split('\\n')\nfor "
    "line in lines[1:int(lines[0]) + 1]:\n    print(len(line.split()))",
    "code-maxsub": "class Solution:\n    def maxSubArray(self, nums):\n        best = cur = nums[0]\n"
    "        for x in nums[1:]:\n            cur = max(x, cur + "
    "x)\n            best = max(best, cur)\n        return best",
}


def fenced(code: str) -> str:
    return f"<think>plan</think>\nHere is my solution.\n```python\n{code}\n```"


def test_hand_made_answers_are_graded_by_the_right_grader():
    math = benchmarks.load(BenchmarkSpec(**MATH))
    half = next(p for p in math if p.question_id == "math-2")
    for answer, correct in (("0.5", True), ("\\dfrac{1}{2}", True), ("1/2", True), ("0.25", False)):
        result = grade(half, half.present(0)[1], f"<think>x</think>So \\boxed{{{answer}}}.", 6.0)
        assert result.correct is correct and result.extracted == answer
    for problem in benchmarks.load(BenchmarkSpec(**CHOICE)):
        letter = problem.present(5)[1]
        wrong = next(x for x in "ABCD" if x != letter)
        assert grade(problem, letter, f"Reasoning.\nAnswer: {letter}", 6.0).correct
        assert grade(problem, letter, f"Answer: {wrong}", 6.0).reason == "wrong_answer"
    code = benchmarks.load(BenchmarkSpec(**CODE))
    # several programs at once in the sandbox, results in problem order
    responses = [fenced(CODE_SOLUTIONS[p.question_id]) for p in code] + [fenced("print(0)")]
    results = grade_all(code + code[:1], [p.present(0)[1] for p in code + code[:1]], responses, 6.0)
    assert [(r.correct, r.reason) for r in results] == [(True, "correct")] * len(code) + [(False, "wrong_answer")]
    code = {p.question_id: p for p in benchmarks.load(BenchmarkSpec(**CODE))}
    assert (
        grade(code["code-sum"], "", fenced("a, b = map(int, input().split())\nprint(a - b)"), 6.0).reason
        == "wrong_answer"
    )
    assert grade(code["code-maxsub"], "", fenced("class Solution:\n    pass"), 6.0).reason == "runtime_error"
    assert grade(code["code-sum"], "", "no code at all", 6.0).reason == "no_code"


# ----------------------------------------------------------------------------- eval tasks


def check_records(table: pa.Table, model: str, mode: str, seed: int, n: int) -> list[dict]:
    assert table.schema.equals(EVAL)
    rows = table.to_pylist()
    assert len(rows) == n
    for row in rows:
        assert (row["model"], row["mode"], row["seed"]) == (model, mode, seed)
        assert 0 < row["completion_tokens"]
    return rows


def test_progress_cleanup_tolerates_tasks_finishing_together(tmp_path):
    shared = tmp_path / "progress"
    (shared / "seed-0").mkdir(parents=True)
    (shared / "seed-1").mkdir()
    (shared / "seed-0" / "chunk-00000.parquet").write_bytes(b"x")
    evaluate.remove_progress(shared / "seed-0")  # seed-1 still running: the shared folder stays
    assert [p.name for p in shared.iterdir()] == ["seed-1"]
    evaluate.remove_progress(shared / "seed-1")  # the last one out removes it
    assert not shared.exists()
    evaluate.remove_progress(shared / "seed-1")  # already removed by a task finishing alongside


def test_direct_eval_tasks_write_graded_records(tmp_path, engine):
    run = prepare_run(
        tmp_path, {"benchmarks": [{**MATH}, {**CHOICE, "limit": 2}, {**CODE, "limit": 2}], "seeds": [0, 1]}
    )
    cfg = run.load_config()
    tasks = eval_tasks(cfg, "base")
    assert len(tasks) == 6 and {s.name: s.array_size for s in build_plan(cfg)}["eval_base"] == 6
    for index, task in enumerate(tasks):
        summary = run_eval(run, "eval_base", index, engine=engine)
        out = evaluate.output_path(run, "base", task)
        assert out == run.root / "eval" / "base" / task.benchmark / f"seed-{task.seed}.parquet"
        spec = next(b for b in cfg.eval.benchmarks if b.name == task.benchmark)
        problems = {p.question_id: p for p in benchmarks.load(spec)}
        rows = check_records(pq.read_table(out), "base", "direct", task.seed, len(problems))
        for row in rows:
            assert row["samples"] == 1 and row["chosen_candidate"] == 0 and row["completion_tokens"] <= 24
            problem = problems[row["question_id"]]
            assert (row["question"], row["reference"]) == problem.present(task.seed)
            if problem.grader == "math":  # the stored verdict is the grader's, re-derived here
                expected = grade_math(row["response"], row["reference"])
            elif problem.grader == "choice":
                expected = grade_choice(row["response"], row["reference"], 4)
            else:
                expected = grade(problem, row["reference"], row["response"], 6.0)
            assert (row["correct"], row["grade_reason"], row["extracted"]) == (
                expected.correct,
                expected.reason,
                expected.extracted,
            )
        assert json.loads(evaluate.summary_path(out).read_text()) == summary
        assert summary["questions"] == len(rows) and summary["correct"] == sum(r["correct"] for r in rows)
        assert summary["completion_tokens"] == sum(r["completion_tokens"] for r in rows)
        assert run.is_done("eval_base", index)
        assert not (out.parent / "progress").exists()
    # the code benchmark's summary states the isolation this machine gives, as the report reads it
    stated = json.loads(next(run.root.glob("eval/base/code/seed-0.json")).read_text())["sandbox"]
    assert stated["isolation"] == sandbox.sandbox_isolation()
    assert stated["network_isolated"] == (stated["isolation"] in sandbox.ISOLATING)
    assert set(stated) == {"isolation", "network_isolated", "total_memory", "missing"} and stated["total_memory"]
    # a finished task is a no-op: no engine needed, nothing rewritten
    before = evaluate.output_path(run, "base", tasks[0]).stat().st_mtime_ns
    assert run_eval(run, "eval_base", 0)["questions"] == 5
    assert evaluate.output_path(run, "base", tasks[0]).stat().st_mtime_ns == before

    # the trained model is read from train/final and samples with the same per-question seeds
    with pytest.raises(ValueError, match="train/final is missing; run \\(or resume\\) the train stage"):
        run_eval(run, "eval_trained", 0, engine=engine)
    shutil.copytree(models.resolve("builtin:tiny-qwen3"), run.root / "train" / "final")
    run_eval(run, "eval_trained", 0, engine=engine)
    base = pq.read_table(run.root / "eval" / "base" / "math" / "seed-0.parquet").column("response").to_pylist()
    trained = pq.read_table(run.root / "eval" / "trained" / "math" / "seed-0.parquet").column("response").to_pylist()
    assert trained == base  # same weights, same seeds


def test_resume_redoes_only_missing_chunks(tmp_path, engine, monkeypatch):
    run = prepare_run(tmp_path, {"benchmarks": [MATH], "seeds": [3]})
    cfg = run.load_config()
    task = eval_tasks(cfg, "base")[0]
    saved, asked = [], []
    real_table, real_stream = evaluate.chunk_table, engine.stream

    def failing_second(cfg, model, task, chunk, *rest):
        saved.append([p.question_id for p in chunk])
        if len(saved) == 2:
            raise RuntimeError("preempted")
        return real_table(cfg, model, task, chunk, *rest)

    def counting(prompts, *args, **kwargs):
        asked.append(len(prompts))
        return real_stream(prompts, *args, **kwargs)

    monkeypatch.setattr(evaluate, "chunk_table", failing_second)
    monkeypatch.setattr(engine, "stream", counting)
    with pytest.raises(RuntimeError, match="preempted"):
        run_eval(run, "eval_base", 0, engine=engine)
    assert not run.is_done("eval_base", 0) and not evaluate.output_path(run, "base", task).exists()
    first = saved[0]  # whichever chunk finished first was saved; the other one is redone
    summary = run_eval(run, "eval_base", 0, engine=engine)
    assert asked == [5, 5 - len(first)] and saved[2] == saved[1]
    assert summary["chunks_resumed"] == 1 and summary["questions"] == 5
    # the resumed records equal an uninterrupted run's: every question has its own seed
    monkeypatch.undo()
    fresh = prepare_run(tmp_path, {"benchmarks": [MATH], "seeds": [3]}, name="fresh")
    run_eval(fresh, "eval_base", 0, engine=engine)

    def read(r):
        return pq.read_table(evaluate.output_path(r, "base", task)).drop_columns(["question"]).to_pylist()

    assert read(run) == read(fresh)


def test_direct_eval_queues_every_chunk_in_one_engine_run(tmp_path, engine, monkeypatch):
    """Per-chunk calls would make the engine wait for each chunk's longest sample."""
    run = prepare_run(tmp_path, {"benchmarks": [MATH], "seeds": [0]})
    runs, saved_while_sampling = [], []
    real_stream, real_table = engine.stream, evaluate.chunk_table

    def recording(prompts, *args, **kwargs):
        runs.append(len(prompts))
        return real_stream(prompts, *args, **kwargs)

    def saving(*args):
        saved_while_sampling.append(engine.llm.llm_engine.get_num_unfinished_requests())
        return real_table(*args)

    monkeypatch.setattr(engine, "stream", recording)
    monkeypatch.setattr(evaluate, "chunk_table", saving)
    run_eval(run, "eval_base", 0, engine=engine)
    assert runs == [5] and len(saved_while_sampling) == 2


def test_uq_ttc_answers_with_the_first_verified_candidate(tmp_path, engine, monkeypatch):
    settings = {"benchmarks": [{**CHOICE, "limit": 2}], "seeds": [0], "uq_ttc": True, "uq_ttc_candidates": 3}
    run = prepare_run(
        tmp_path, settings, generate={"chunk_size": 3, "require_think": "off"}, verify={"votes": 1, "max_tokens": 8}
    )
    cfg = run.load_config()
    tasks = eval_tasks(cfg, "base")
    assert [t.mode for t in tasks] == ["direct", "uq_ttc"]
    run_eval(run, "eval_base", 0, engine=engine)
    # the real cascade on the tiny model: whatever it decides, the records are consistent
    summary = run_eval(run, "eval_base", 1, engine=engine)
    out = evaluate.output_path(run, "base", tasks[1])
    assert out.name == "seed-0-uq_ttc.parquet"
    rows = check_records(pq.read_table(out), "base", "uq_ttc", 0, 2)
    for row in rows:
        # 3 candidates, then per judged candidate: one inferred question and one vote per stage reached
        assert 3 + 3 <= row["samples"] <= 3 + 3 * 4
        assert row["chosen_candidate"] in (0, 1, 2)
        assert row["correct"] == grade_choice(row["response"], row["reference"], 4).correct
    assert summary["samples"] == sum(r["samples"] for r in rows)

    # the choice rule, with verdicts fixed: question 1 -> candidates 1 and 2 pass; question 2 -> none does
    judged = []

    def fixed_cascade(engine, items, verify_cfg, checkpoint=None, style="ours"):
        judged.extend(item.key for item in items)
        passing = ("choice-1/1", "choice-1/2")
        return [
            CascadeResult(status="passed", samples=3, completion_tokens=5)
            if item.key.endswith(passing)
            else CascadeResult(status="rejected", failed_stage="cycle", samples=3, completion_tokens=5)
            for item in items
        ]

    monkeypatch.setattr(evaluate, "run_cascade", fixed_cascade)
    # every candidate reaches the judges here (the real static filter may drop an empty one)
    monkeypatch.setattr(
        evaluate.prompts, "filter_reason", lambda text, domain, require_think, require_format=True: None
    )
    (run.root / "eval_base" / "done" / "00001").unlink()
    run_eval(run, "eval_base", 1, engine=engine)
    rows = {r["question_id"]: r for r in pq.read_table(out).to_pylist()}
    direct = {r["question_id"]: r for r in pq.read_table(evaluate.output_path(run, "base", tasks[0])).to_pylist()}
    assert sorted(judged) == [f"eval/choice/0/choice-{q}/{k}" for q in (1, 2) for k in range(3)]
    assert rows["choice-1"]["chosen_candidate"] == 1 and rows["choice-2"]["chosen_candidate"] == 0
    assert rows["choice-1"]["samples"] == 3 + 3 * 3
    # candidate 0 is drawn with the direct answer's seed: the fallback is the base model's own answer
    assert rows["choice-2"]["response"] == direct["choice-2"]["response"]
    assert rows["choice-1"]["response"] != direct["choice-1"]["response"]


@pytest.mark.slow  # ~35 s; eval tasks in their own processes also run in the default end-to-end run on the cluster
def test_eval_task_through_the_local_scheduler(tmp_path):
    run = prepare_run(tmp_path, {"benchmarks": [{**MATH, "limit": 2}], "seeds": [7]})
    cfg = run.load_config()
    plan = [s for s in build_plan(cfg) if s.name in ("eval_base", "report")]
    local.run_plan(cfg, run, plan)
    rows = check_records(pq.read_table(run.root / "eval" / "base" / "math" / "seed-7.parquet"), "base", "direct", 7, 2)
    assert all(r["correct"] == grade_math(r["response"], r["reference"]).correct for r in rows)
    assert run.is_done("eval_base", 0) and run.is_done("report", 0)
    assert "| math | math | 2 | 1 |" in (run.root / "report.md").read_text()


def test_eval_task_index_must_exist(tmp_path):
    run = prepare_run(tmp_path, {"benchmarks": [MATH], "seeds": [0]})
    with pytest.raises(ConfigError, match="eval_base has 1 tasks .* task 4 does not exist"):
        evaluate.run_base(run, 4)


def test_math_last_number_grader_reads_unboxed_answers():
    from svd_hpc.eval.benchmarks import Problem

    problem = Problem("q", "What is 36 + 47?", "math", "math_last_number")
    assert grade(problem, "83", "36 + 47 = 83\n\nThe answer is: 83.", 6.0).correct
    assert not grade(problem, "83", "36 + 47 = 108", 6.0).correct
    assert grade(problem, "83", "So 80 + 3 gives \\boxed{83}", 6.0).correct
    strict = Problem("q", "What is 36 + 47?", "math", "math")
    assert not grade(strict, "83", "The answer is: 83.", 6.0).correct


# ----------------------------------------------------------------------------- the authors' eval protocol


class PromptRecorder:
    """An engine that records what it is asked (conversations, sampling) and answers \\boxed{7}."""

    def __init__(self):
        self.conversations, self.samplings = [], []

    def render(self, conversation, enable_thinking=None, reply_prefix=""):
        self.conversations.append(conversation)
        return [len(self.conversations)]

    def stream(self, prompts, sampling, seeds):
        self.samplings.append(sampling)
        for i, _ in enumerate(prompts):
            yield i, [Completion("<think>x</think>So \\boxed{7}", 3, "stop", 5)]


def test_eval_asks_each_benchmark_with_its_own_prompt_repeats_and_sampling(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmarks, "hub_unreachable", lambda: "no hub in this test")
    (tmp_path / "hmmt.jsonl").write_text(
        json.dumps({"problem_idx": 1, "problem": "Compute 1 * 7.", "answer": "7"}) + "\n"
    )
    (tmp_path / "gpqa.csv").write_text(
        "Record ID,Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
        "rec1,What is heavier?,lead,feathers,air,helium\n"
    )
    run = prepare_run(
        tmp_path,
        {
            "benchmarks": [
                {"name": "hmmt", "preset": "hmmt_feb_2025", "path": str(tmp_path / "hmmt.jsonl")},
                {"name": "gpqa", "preset": "gpqa_diamond", "path": str(tmp_path / "gpqa.csv")},
                {"name": "math", **{k: v for k, v in MATH.items() if k != "name"}, "limit": 1},
            ]
        },
    )  # no preset: our prompt
    cfg = run.load_config()
    tasks = eval_tasks(cfg, "base")
    # the authors' repeats: HMMT 10, GPQA 3; a benchmark without preset once
    assert [(t.benchmark, t.seed) for t in tasks] == [("hmmt", s) for s in range(10)] + [
        ("gpqa", s) for s in range(3)
    ] + [("math", 0)]
    engine = PromptRecorder()
    for index in (0, 11, 13):
        run_eval(run, "eval_base", index, engine=engine)
    hmmt, gpqa, math = (c[0]["content"] for c in engine.conversations)
    assert (
        hmmt
        == "Problem: Compute 1 * 7.\nPlease reason step by step, and put your final answer within \\boxed{}.\nAnswer:"
    )
    shown, letter = benchmarks.load(cfg.eval.benchmarks[1])[0].present(1)
    options = ", ".join(line for line in shown.split("\n\n")[1].split("\n"))
    assert gpqa == (
        "Return your final response within \\boxed{} and only include the letter choice (A, B, C, or D) "
        f"as your final response.\nProblem: What is heavier?\nOptions: {options}\nAnswer:"
    )
    assert f"{letter}) lead" in gpqa
    assert math == prompts.user_prompt(read_jsonl(SAMPLES / "math.jsonl")[0]["question"], "math")
    assert {(s.temperature, s.top_p, s.n) for s in engine.samplings} == {(0.7, 1.0, 1)}  # the authors' T and top_p
    summary = json.loads(evaluate.summary_path(evaluate.output_path(run, "base", tasks[11])).read_text())
    assert (summary["prompt"], summary["option_order"], summary["rows_left_out"]) == (
        "gpqa",
        "seeded",
        {"options_unparsed": 0},
    )


def test_eval_seeds_per_benchmark_and_the_qwen3_configs():
    spec = lambda **kw: BenchmarkSpec(name="b", **kw)  # noqa: E731
    default = config.EvalConfig()
    assert [benchmarks.seeds_of(default, spec(preset=p)) for p in benchmarks.PRESETS] == [
        [0],
        list(range(10)),
        [0, 1, 2],
        [0, 1, 2],
        [0, 1, 2],
        [0, 1, 2],
    ]  # aime26 hmmt gpqa hle lcb_v5 lcb_v6
    assert benchmarks.seeds_of(default, spec(path="x.jsonl")) == [0]
    assert benchmarks.seeds_of(config.EvalConfig(seeds=[4, 5]), spec(preset="hmmt_feb_2025")) == [4, 5]  # eval.seeds
    assert benchmarks.seeds_of(config.EvalConfig(seeds=[4, 5]), spec(preset="hmmt_feb_2025", seeds=[9])) == [9]
    for path in sorted((REPO / "configs").glob("qwen3-*.yaml")):
        cfg = config.load(path)
        assert (cfg.eval.temperature, cfg.eval.top_p, cfg.eval.code_tests, cfg.eval.code_time_limit) == (
            0.7,
            1.0,
            "private",
            "total",
        ), path.name
        for bench in cfg.eval.benchmarks:
            src = benchmarks.resolve(bench)
            assert (
                src.prompt
                == {
                    "aime26": "aime",
                    "hmmt_feb_2025": "hmmt",
                    "gpqa_diamond": "gpqa",
                    "hle_mc": "hle",
                    "lcb_v5": "lcb",
                    "lcb_v6": "lcb",
                }[bench.preset]
            ), path.name
            assert len(benchmarks.seeds_of(cfg.eval, bench)) == benchmarks.PRESETS[bench.preset].repeats
        assert eval_tasks(cfg, "trained") == [t for t in eval_tasks(cfg, "base") if t.mode == "direct"]
    math = config.load(REPO / "configs" / "qwen3-4b-math.yaml")
    assert [(t.benchmark, t.seed) for t in eval_tasks(math, "trained")] == [("aime26", 0)] + [
        ("hmmt_feb_2025", s) for s in range(10)
    ]


def test_gpqa_option_orders():
    header = "Record ID,Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
    rows = "".join(f"r{i},Question {i}?,right{i},w{i}a,w{i}b,w{i}c\n" for i in range(12))

    def letters(order: str | None) -> set[str]:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "g.csv").write_text(header + rows)
            problems = benchmarks.load(
                BenchmarkSpec(name="g", preset="gpqa_diamond", path=str(Path(folder) / "g.csv"), option_order=order)
            )
        return {p.present(seed)[1] for p in problems for seed in range(3)}

    assert letters("fixed42") == {"D"}  # the authors' Random(42) per question: always D
    assert letters("original") == {"A"}  # the correct answer is listed first
    assert letters(None) == set("ABCD")  # ours (the preset default): per (seed, question)


def test_hle_answers_are_read_at_the_first_answer_line():
    from svd_hpc.eval.benchmarks import Problem

    hle = Problem(
        "h",
        "Q?\n\nAnswer Choices:\nA. x\nB. y\nC. z",
        "science",
        "choice",
        prompt="hle",
        stem="Q?",
        options=["x", "y", "z"],
        correct_index=2,
        option_order="original",
    )
    response = "<think>Answer: A</think>Answer: C\nOn reflection, the answer is: B"
    assert grade(hle, "C", response, 6.0).correct  # the first "Answer: X" after the thinking
    ours = dataclasses.replace(hle, prompt="sft")
    assert grade(ours, "C", response, 6.0).extracted == "B"  # ours: the last stated answer
    assert grade(hle, "C", "Answer: The option C", 6.0).extracted == "C"  # "The" is no letter
    unparsed = dataclasses.replace(hle, options=None, correct_index=None, correct_letter="E")
    assert grade(unparsed, "E", "Answer: E", 6.0).correct  # options not parsed: any letter may be named


def test_code_is_graded_on_private_tests_within_one_budget(tmp_path):
    problems = {p.question_id: p for p in benchmarks.load(BenchmarkSpec(**CODE))}
    # right on the private tests of code-max, wrong on its public one (3 1 9 4 -> 9)
    fits_private = fenced("n = int(input())\nxs = list(map(int, input().split()))\nprint(xs[0] if n != 3 else 0)")
    assert grade(problems["code-max"], "", fits_private, 6.0).correct
    assert grade(problems["code-max"], "", fits_private, 6.0, code_tests="all").reason == "wrong_answer"
    # two tests of 0.8 s each: over a 0.5 s limit per test, within the budget (0.5 + 1) * 2 + 5 s
    slow = fenced("import time\ntime.sleep(0.8)\ninput()\nprint(max(map(int, input().split())))")
    assert grade(problems["code-max"], "", slow, 0.5).correct
    assert grade(problems["code-max"], "", slow, 0.5, time_limit="per_test").reason == "timeout"


@pytest.mark.parametrize("which, uq_ttc_tasks", [("one", [("hmmt_feb_2025", 0)]), ("all", None)])
def test_uq_ttc_runs_once_per_benchmark_unless_every_seed_is_asked(which, uq_ttc_tasks):
    overrides = ["eval.benchmarks=[{name: hmmt_feb_2025, preset: hmmt_feb_2025}]", "eval.uq_ttc=true"]
    cfg = config.load(REPO / "configs" / "qwen3-4b-math.yaml", overrides + [f"eval.uq_ttc_seeds={which}"])
    base = eval_tasks(cfg, "base")
    direct = [(t.benchmark, t.seed) for t in base if t.mode == "direct"]
    assert direct == [("hmmt_feb_2025", s) for s in range(10)]
    assert [(t.benchmark, t.seed) for t in base if t.mode == "uq_ttc"] == (uq_ttc_tasks or direct)
    assert base[: len(direct)] == [t for t in base if t.mode == "direct"]  # task indices of direct eval unchanged
    assert eval_tasks(cfg, "trained") == [t for t in base if t.mode == "direct"]
    sizes = {s.name: s.array_size for s in build_plan(cfg)}
    assert (sizes["eval_base"], sizes["eval_trained"]) == (10 + (1 if which == "one" else 10), 10)
    assert config.EvalConfig().uq_ttc_seeds == "one"  # the authors' default


def test_uq_ttc_once_takes_a_benchmarks_first_seed():
    cfg = config.load(
        REPO / "configs" / "tiny.yaml",
        [
            "eval.uq_ttc=true",
            "eval.seeds=[3, 4]",
            "eval.benchmarks=[{name: a, path: a.jsonl}, {name: b, path: b.jsonl, seeds: [7]}]",
        ],
    )
    assert [(t.benchmark, t.seed) for t in eval_tasks(cfg, "base") if t.mode == "uq_ttc"] == [("a", 3), ("b", 7)]


def test_a_run_directory_from_before_uq_ttc_seeds_keeps_its_uq_ttc_task_per_seed(tmp_path):
    """Its plan.json has UQ-TTC on every eval seed; reading its config must plan the same tasks."""
    saved = yaml.safe_load((Path(__file__).parent / "data" / "run-212e7e5" / "config.yaml").read_text())
    saved["eval"]["uq_ttc"] = True
    saved["eval"].pop("uq_ttc_seeds", None)
    run = RunDir(tmp_path / "old")
    run.root.mkdir()
    (run.root / "config.yaml").write_text(yaml.safe_dump(saved))
    assert run.load_config().eval.uq_ttc_seeds == "all"
    saved["eval"]["uq_ttc_seeds"] = "one"  # written by today's launch: kept as written
    (run.root / "config.yaml").write_text(yaml.safe_dump(saved))
    assert run.load_config().eval.uq_ttc_seeds == "one"
