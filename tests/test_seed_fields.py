"""Dotted seed fields (conversations.0.value) and the row filter (filter_field = filter_value), in every format."""

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from svd_hpc import config
from svd_hpc.config import ConfigError
from svd_hpc.inputs import seeds

# OpenThoughts3-1.2M's shape: the question is the first (human) turn, domains mixed in one set
OT3_ROWS = [
    {"domain": "math", "conversations": [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4"}]},
    {"domain": "code", "conversations": [{"from": "human", "value": "Sort a list."}, {"from": "gpt", "value": "x"}]},
    {"domain": "math", "conversations": [{"from": "human", "value": "What is 3+3?"}, {"from": "gpt", "value": "6"}]},
    {"domain": "science", "conversations": [{"from": "human", "value": "Why is the sky blue?"}]},
    {"domain": "math", "conversations": [{"from": "human", "value": "what is 2+2?"}]},  # a duplicate up to case
]
OT3 = {"question_field": "conversations.0.value", "filter_field": "domain", "filter_value": "math"}


def write(tmp_path: Path, fmt: str, rows: list) -> Path:
    """The rows as a JSONL file, a parquet file or a saved HF dataset."""
    if fmt == "jsonl":
        path = tmp_path / "s.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "parquet":
        path = tmp_path / "s.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path = tmp_path / "ds"
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf"])
def test_dotted_question_field_and_domain_filter_read_openthoughts3_rows(tmp_path, fmt):
    path = write(tmp_path, fmt, OT3_ROWS)
    table, stats = seeds.load_with_report(config.SeedsConfig(path=str(path), **OT3))
    assert table.column("question").to_pylist() == ["What is 2+2?", "What is 3+3?"]
    # rows are named by their place in the file, before the filter
    assert stats["rows_read"] == 5 and stats["filtered_out"] == 2 and stats["duplicates_dropped"] == 1
    assert table.column("source_index").to_pylist() == [0, 1]


def test_without_a_filter_the_stats_carry_no_filtered_count(tmp_path):
    path = write(tmp_path, "jsonl", OT3_ROWS[:3])
    _, stats = seeds.load_with_report(config.SeedsConfig(path=str(path), question_field="conversations.0.value"))
    assert "filtered_out" not in stats and stats["seeds"] == 3


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_row_where_the_path_runs_out_is_named(tmp_path, fmt):
    rows = [OT3_ROWS[0], {"domain": "math", "conversations": []}]
    path = write(tmp_path, fmt, rows)
    where = "line 2" if fmt == "jsonl" else "row 1"
    with pytest.raises(
        ValueError, match=rf"{where}: field 'conversations.0.value' \(seeds.question_field\) is missing"
    ):
        seeds.load(config.SeedsConfig(path=str(path), **OT3))


def test_a_path_that_does_not_fit_the_schema_names_the_step(tmp_path):
    path = write(tmp_path, "parquet", OT3_ROWS)
    with pytest.raises(
        ValueError, match=r"field 'conversations.0.text' .*'conversations.0' holds records.*its keys are: from, value"
    ):
        seeds.load(config.SeedsConfig(path=str(path), question_field="conversations.0.text"))
    with pytest.raises(ValueError, match=r"'domain' holds string, which has no position '0'"):
        seeds.load(config.SeedsConfig(path=str(path), question_field="domain.0"))
    with pytest.raises(
        ValueError, match=r"has no field 'turns' \(named in seeds config\); its fields are: domain, conversations"
    ):
        seeds.load(config.SeedsConfig(path=str(path), question_field="turns.0.value"))
    jsonl = write(tmp_path, "jsonl", OT3_ROWS)
    with pytest.raises(
        ValueError, match=r"s.jsonl line 1: field 'domain.x' .*'domain' holds text, which has no key 'x'"
    ):
        seeds.load(config.SeedsConfig(path=str(jsonl), question_field="domain.x"))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_filter_that_keeps_nothing_lists_the_values_seen(tmp_path, fmt):
    path = write(tmp_path, fmt, OT3_ROWS)
    cfg = config.SeedsConfig(path=str(path), **{**OT3, "filter_value": "Math"})
    with pytest.raises(ValueError, match=r"no row has domain = 'Math'.*values seen: code, math, science"):
        seeds.load(cfg)


def test_a_numeric_or_flag_filter_compares_as_text(tmp_path):
    rows = [{"q": "a", "n": 3, "ok": True}, {"q": "b", "n": 4, "ok": False}, {"q": "c", "n": 3, "ok": False}]
    for fmt in ("jsonl", "parquet"):
        path = write(tmp_path, fmt, rows)
        by_number = seeds.load(
            config.SeedsConfig(path=str(path), question_field="q", filter_field="n", filter_value="3")
        )
        assert by_number.column("question").to_pylist() == ["a", "c"]
        by_flag = seeds.load(
            config.SeedsConfig(path=str(path), question_field="q", filter_field="ok", filter_value="true")
        )
        assert by_flag.column("question").to_pylist() == ["a"]


def test_a_column_whose_name_has_dots_is_read_as_it_is(tmp_path):
    path = write(tmp_path, "parquet", [{"problem.text": "Q?"}])
    assert seeds.load(config.SeedsConfig(path=str(path), question_field="problem.text")).num_rows == 1


def test_filter_field_and_value_go_together(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"name": "t", "seeds": {"path": "x.jsonl", "filter_field": "domain"}}))
    with pytest.raises(ConfigError, match="seeds.filter_field and seeds.filter_value go together"):
        config.load(cfg)
    cfg.write_text(
        json.dumps({"name": "t", "seeds": {"sources": [{"path": "x.jsonl", "filter_value": "math"}], "shards": 1}})
    )
    with pytest.raises(ConfigError, match=r"seeds.sources\[0\].filter_field and seeds.sources\[0\].filter_value"):
        config.load(cfg)


def test_the_qwen3_0_6b_math_config_reads_openthoughts3_math_rows(tmp_path):
    """The config's field names against a copy shaped as OpenThoughts3-1.2M (domain, conversations)."""
    repo = Path(__file__).resolve().parents[1]
    path = write(tmp_path, "parquet", OT3_ROWS)
    cfg = config.load(repo / "configs" / "qwen3-0.6b-math.yaml", [f"seeds.path={path}", "seeds.shards=1"])
    assert cfg.seeds.limit == 53000 and cfg.seeds.path == str(path)
    table, stats = seeds.load_with_report(cfg.seeds)
    assert table.column("question").to_pylist() == ["What is 2+2?", "What is 3+3?"]
    assert stats["filtered_out"] == 2


def test_an_unquoted_number_or_flag_as_filter_value_is_read_as_text(tmp_path):
    path = write(tmp_path, "jsonl", [{"q": "a", "n": 3, "ok": True}, {"q": "b", "n": 4, "ok": False}])
    cfg = tmp_path / "run.yaml"
    for field, value, kept in (("n", 3, ["a"]), ("ok", False, ["b"])):
        cfg.write_text(
            f"name: t\nseeds: {{path: {path}, question_field: q, filter_field: {field}, filter_value: {value}}}\n"
        )
        seeds_cfg = config.load(cfg).seeds
        assert seeds.load(seeds_cfg).column("question").to_pylist() == kept
