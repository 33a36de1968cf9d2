"""Reading question files and dataset folders: JSON lines, and a split of a saved or downloaded dataset.

The seeds and the benchmarks read their sources through these, so both give the same messages.
"""

from __future__ import annotations

import json
from pathlib import Path

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


def read_jsonl(path: Path) -> tuple[list[dict], list[str]]:
    """Rows of a JSON-lines file and, for messages, where each came from ("file line N")."""
    rows, where = [], []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path} line {number}: not valid UTF-8; re-save the file as UTF-8.") from None
            if not line.strip():
                continue
            if number == 1 and line.lstrip().startswith("["):
                raise ValueError(f"{path} is one JSON array; write one JSON object per line (JSONL) instead.")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {number}: invalid JSON ({err.msg}); fix or remove the line.") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}.")
            rows.append(row)
            where.append(f"{path} line {number}")
    return rows, where


class MissingSplit(ValueError):
    """A dataset folder lacks the configured split."""


def read_dataset_split(path: Path, hf_config: str | None, split: str, where: str, split_key: str = ""):
    """The `split` of a dataset folder: one written by `save_to_disk`, or one `datasets.load_dataset`
    reads (a downloaded hub snapshot). MissingSplit names `where` (and the config key `split_key`)
    and the splits there are; anything else is the library's own error."""
    import datasets

    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        data = datasets.load_from_disk(str(path))
    else:
        data = datasets.load_dataset(str(path), hf_config)
    if isinstance(data, (datasets.DatasetDict, dict)):
        if split not in data:
            key = f" ({split_key})" if split_key else ""
            raise MissingSplit(f"{where} has no split '{split}'{key}; splits: {', '.join(data)}.")
        data = data[split]
    return data
