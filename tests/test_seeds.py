"""Seed loading, checking and sharding (no model needed)."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from svd_hpc import config, records
from svd_hpc.inputs import seeds
from svd_hpc.records import SEED
from svd_hpc.rundir.layout import RunDir

UNICODE_QUESTIONS = [
    "Combien font 12 × 3 ?",
    "Сколько будет 7 + 5?",
    "３たす４は？",
    "What is 2 + 2? 🤔",
    "Zero width\u200bjoiner and combining e\u0301 stay as they are",
    "Inner  spacing\tand\nnewlines stay; outer spaces go",
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))
    return path


def seeds_cfg(path, **kw) -> config.SeedsConfig:
    return config.SeedsConfig(path=str(path), **kw)


def run_cfg(tmp_path: Path, seeds_path: Path, shards: int, **kw) -> config.RunConfig:
    cfg_path = tmp_path / "run.yaml"
    seeds_section = {"path": str(seeds_path), "shards": shards, **kw}
    cfg_path.write_text(json.dumps({"name": "t", "seeds": seeds_section}))
    return config.load(cfg_path)


def test_unicode_passes_through_untouched(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"question": q} for q in UNICODE_QUESTIONS])
    table = seeds.load(seeds_cfg(path))
    assert table.schema.equals(SEED)
    assert table.column("question").to_pylist() == UNICODE_QUESTIONS
    padded = write_jsonl(tmp_path / "p.jsonl", [{"question": f"  {q}\n"} for q in UNICODE_QUESTIONS])
    assert seeds.load(seeds_cfg(padded)).column("question").to_pylist() == UNICODE_QUESTIONS
    assert table.column("domain").to_pylist() == ["math"] * len(UNICODE_QUESTIONS)
    ids = table.column("question_id").to_pylist()
    assert len(set(ids)) == len(ids) and ids[0] == records.question_id(UNICODE_QUESTIONS[0])


def test_questions_are_stripped_and_case_or_whitespace_duplicates_dropped(tmp_path):
    rows = [
        {"question": "  What is 1+1?\n"},
        {"question": "what is 1+1?"},  # differs only in case
        {"question": "What  is\t1+1?"},  # differs only in inner whitespace
        {"question": "WHAT IS 1+1? "},
        {"question": "What is 1 + 1?"},  # other characters: a question of its own
        {"question": "Straße?"},
        {"question": "STRASSE?"},  # casefold: ß folds to ss
        {"question": "\u3000全角 spaces?\u3000"},  # Unicode whitespace is whitespace too
        {"question": "全角 spaces?"},
    ]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    table, report = seeds.load_with_report(seeds_cfg(path))
    assert table.column("question").to_pylist() == ["What is 1+1?", "What is 1 + 1?", "Straße?", "全角 spaces?"]
    assert table.column("source_index").to_pylist() == [0, 4, 5, 7]
    # the id of a question without an id field is the hash of its stripped text
    assert table.column("question_id").to_pylist()[0] == records.question_id("What is 1+1?")
    assert report["duplicates_dropped"] == 5 and report["questions_stripped"] == 3 and report["seeds"] == 4
    # prepare keeps the counts in the seed stats
    run = RunDir(tmp_path / "run")
    stats = seeds.prepare(run_cfg(tmp_path, path, shards=2), run)
    saved = json.loads((run.root / "seeds" / "stats.json").read_text())
    assert saved == stats and saved["duplicates_dropped"] == 5 and saved["questions_stripped"] == 3
    shards = [pq.read_table(run.shard_path("seeds", i)).column("question").to_pylist() for i in range(2)]
    assert shards[0] + shards[1] == ["What is 1+1?", "What is 1 + 1?", "Straße?", "全角 spaces?"]


def test_fields_are_mapped_and_duplicates_dropped_once(tmp_path):
    rows = [
        {"uid": 7, "problem": "What is 1+1?", "area": "math"},
        "",  # blank lines are skipped
        {"uid": 8, "problem": "Which gas do plants absorb? A) O2 B) CO2", "area": "science"},
        {"uid": 9, "problem": "What is 1+1?", "area": "math"},  # duplicate question
        {"uid": 10, "problem": " What is 1+1? ", "area": "math"},  # duplicate up to outer spaces
        {"uid": 11, "problem": "Write a function returning 3.", "area": "code"},
    ]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    cfg = seeds_cfg(path, question_field="problem", id_field="uid", domain_field="area")
    table, report = seeds.load_with_report(cfg)
    assert table.column("question_id").to_pylist() == ["7", "8", "11"]
    assert table.column("domain").to_pylist() == ["math", "science", "code"]
    assert table.column("source_index").to_pylist() == [0, 1, 4]
    assert report["duplicates_dropped"] == 2 and report["seeds"] == 3


def test_limit_keeps_the_first_questions(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"question": f"Q{i}?"} for i in range(10)])
    assert seeds.load(seeds_cfg(path, limit=4)).column("question").to_pylist() == ["Q0?", "Q1?", "Q2?", "Q3?"]


@pytest.mark.parametrize(
    "lines,kw,message",
    [
        (['{"question": "ok"}', '{"question": "bad"'], {}, r"s\.jsonl line 2: invalid JSON"),
        (['{"question": "ok"}', '{"text": "x"}'], {}, r"line 2: field 'question' \(seeds.question_field\) is missing"),
        (['{"question": 42}'], {}, r"line 1: field 'question' must be text, got int"),
        (['{"question": ["a"]}'], {}, r"must be text, got list"),
        (['{"question": "   "}'], {}, r"line 1: field 'question' is empty"),
        (['["question"]'], {}, r"one JSON array"),
        (['"just a string"'], {}, r"line 1: expected a JSON object, got str"),
        (["", "  "], {}, r"holds no questions"),
        (['{"question": "a", "d": "poetry"}'], {"domain_field": "d"}, r"line 1: field 'd' is 'poetry'"),
        (
            ['{"question": "a", "id": 1}', '{"question": "b", "id": 1}'],
            {"id_field": "id"},
            r"line 2: id '1' is used again",
        ),
        (['{"question": "a"}'], {"id_field": "id"}, r"line 1: field 'id' \(seeds.id_field\) is missing"),
    ],
)
def test_bad_jsonl_is_reported_with_file_line_and_field(tmp_path, lines, kw, message):
    path = write_jsonl(tmp_path / "s.jsonl", lines)
    with pytest.raises(ValueError, match=message):
        seeds.load(seeds_cfg(path, **kw))


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"question": "ok"}\n{"question": "\xff\xfe"}\n')
    with pytest.raises(ValueError, match=r"line 2: not valid UTF-8"):
        seeds.load(seeds_cfg(path))


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(ValueError, match=r"seeds.path .*nope.jsonl does not exist"):
        seeds.load(seeds_cfg(tmp_path / "nope.jsonl"))
    (tmp_path / "s.csv").write_text("question\nq\n")
    with pytest.raises(ValueError, match=r"unknown file type"):
        seeds.load(seeds_cfg(tmp_path / "s.csv"))


def test_relative_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "s.jsonl", [{"question": "Q?"}])
    monkeypatch.chdir(tmp_path)
    assert seeds.load(seeds_cfg("s.jsonl")).num_rows == 1


def test_parquet_seeds_and_their_errors(tmp_path):
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"q": ["Ä?", "B?", "Ä?"], "n": [1, 2, 3]}), path)
    table, report = seeds.load_with_report(seeds_cfg(path, question_field="q"))
    assert table.column("question").to_pylist() == ["Ä?", "B?"] and report["duplicates_dropped"] == 1
    with pytest.raises(ValueError, match=r"s.parquet has no field 'question'.*fields are: q, n"):
        seeds.load(seeds_cfg(path))
    with pytest.raises(ValueError, match=r"s.parquet row 0: field 'n' must be text, got int"):
        seeds.load(seeds_cfg(path, question_field="n"))
    pq.write_table(pa.table({"q": ["A?", None]}), path)
    with pytest.raises(ValueError, match=r"row 1: field 'q' \(seeds.question_field\) is missing"):
        seeds.load(seeds_cfg(path, question_field="q"))


def test_local_hf_dataset_dirs(tmp_path):
    import datasets

    data = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"question": ["A?", "B?", "C?"]}).select([2, 0, 1])}
    )
    data.save_to_disk(tmp_path / "saved")
    assert seeds.load(seeds_cfg(tmp_path / "saved")).column("question").to_pylist() == ["C?", "A?", "B?"]
    with pytest.raises(ValueError, match=r"has no split 'test' \(seeds.split\); splits: train"):
        seeds.load(seeds_cfg(tmp_path / "saved", split="test"))
    # a plain folder of data files, read by datasets.load_dataset
    folder = tmp_path / "files"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"question": "D?"}, {"question": "E?"}])
    assert seeds.load(seeds_cfg(folder)).column("question").to_pylist() == ["D?", "E?"]


def test_prepare_writes_shards_once_and_is_idempotent(tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", [{"question": f"Q{i}?"} for i in range(11)] + [{"question": "Q3?"}])
    cfg = run_cfg(tmp_path, src, shards=3)
    run = RunDir(tmp_path / "run")
    stats = seeds.prepare(cfg, run)
    assert stats["seeds"] == 11 and stats["duplicates_dropped"] == 1 and stats["shards"] == 3
    shards = [pq.read_table(run.shard_path("seeds", i)) for i in range(3)]
    assert [t.num_rows for t in shards] == stats["shard_sizes"] == [3, 4, 4]
    assert all(t.schema.equals(SEED) for t in shards)
    assert pa.concat_tables(shards).column("question").to_pylist() == [f"Q{i}?" for i in range(11)]
    # a second call (resume) neither reads the source again nor rewrites the shards
    mtimes = [run.shard_path("seeds", i).stat().st_mtime_ns for i in range(3)]
    src.unlink()
    assert seeds.prepare(cfg, run) == stats
    assert [run.shard_path("seeds", i).stat().st_mtime_ns for i in range(3)] == mtimes
    assert not list((run.root / "seeds").glob(".*tmp*"))


def test_more_shards_than_questions_gives_empty_shards(tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", [{"question": "A?"}, {"question": "B?"}])
    run = RunDir(tmp_path / "run")
    stats = seeds.prepare(run_cfg(tmp_path, src, shards=3), run)
    assert stats["shard_sizes"] == [0, 1, 1]
    assert pq.read_table(run.shard_path("seeds", 0)).schema.equals(SEED)


def test_demo_seed_sets_are_valid():
    repo = Path(__file__).resolve().parent.parent
    demo = seeds.load(seeds_cfg(repo / "data/demo_seeds.jsonl", id_field="id"))
    assert 30 <= demo.num_rows <= 60
    held_out = [json.loads(line) for line in (repo / "data/demo_eval.jsonl").read_text().splitlines()]
    assert all(row["question"] and row["answer"] for row in held_out)
    assert not {row["question"] for row in held_out} & set(demo.column("question").to_pylist())


def test_seeds_dedup_exact_drops_only_equal_text_as_the_authors_do(tmp_path):
    rows = [{"question": "What is 1+1?"}, {"question": "what is 1+1?"}, {"question": "What is 1+1?"}]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    cfg = seeds_cfg(path)
    cfg.dedup = "exact"
    table, report = seeds.load_with_report(cfg)
    assert table.column("question").to_pylist() == ["What is 1+1?", "what is 1+1?"]
    assert report["duplicates_dropped"] == 1
