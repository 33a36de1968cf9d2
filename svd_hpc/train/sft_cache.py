"""The tokenized SFT set on disk: built once by the training ranks, memory-mapped by every one of them.

Tokenising is spread over the training ranks: rank r takes the r-th contiguous slice of rows,
writes its part, and rank 0 joins the parts in rank order into the cache, so the result is
the single-process one whatever the world size. Ranks hand over through files (rank_files.py),
never inside a collective, so a large set cannot trip the process group's timeout. This runs in
the train job rather than the CPU merge job: the train job must rebuild a cache that does not
match anyway (deleted, another tokenizer), it has the model folder at hand (the merge job would
have to fetch train.model's tokenizer on a CPU node), and its N ranks split the work N ways.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

from ..rundir.atomic import atomic_path
from . import sft_data
from .rank_files import RankFiles
from .sft_data import TokenizedSet

ARRAYS = ("input_ids", "labels", "offsets")


def file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_key(dataset: Path, *, model_ref: str, max_seq_len: int, overlong: str, template_kwargs: dict) -> dict:
    """What the tokenized set depends on: the file's bytes, the tokenizer and the settings."""
    return {
        "dataset": file_digest(dataset),
        "model": model_ref,
        "max_seq_len": max_seq_len,
        "overlong": overlong,
        "template_kwargs": template_kwargs,
        "version": 1,
    }


def prepare(
    dataset: Path,
    cache: Path,
    tokenizer,
    *,
    model_ref: str,
    max_seq_len: int,
    overlong: str,
    ranks: RankFiles | None = None,
    template_kwargs: dict | None = None,
) -> TokenizedSet:
    """Tokenize `dataset` into the cache folder `cache` once, spread over `ranks`, or reuse a matching cache.

    Every rank of `ranks` calls this; without it the caller is a world of one. The cache is
    memory-mapped by every rank, so eight processes on a node share one copy.
    """
    settings = dict(
        model_ref=model_ref, max_seq_len=max_seq_len, overlong=overlong, template_kwargs=template_kwargs or {}
    )
    if ranks is None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache.parent, prefix=f".{cache.name}.") as folder:
            return prepare(dataset, cache, tokenizer, ranks=RankFiles(folder, 0, 1), **settings)
    if ranks.rank == 0:  # one digest of a large file, not one per rank
        rows = sft_data.open_dataset(dataset).metadata.num_rows
        key = dataset_key(dataset, **settings)
        cached = (cache / "meta.json").is_file() and json.loads((cache / "meta.json").read_text()).get("key") == key
        ranks.publish("plan", {"key": key, "cached": cached, "rows": rows})
    plan = ranks.wait("plan", [0])[0]
    if not plan["cached"]:
        tokenize_part(dataset, tokenizer, ranks, plan, **settings)
        if ranks.rank == 0:
            join_ranks_parts(ranks, cache, plan["key"], dataset, max_seq_len)
            ranks.publish("data", "ready")
        else:
            ranks.wait("data", [0])
    return load_cache(cache)


def part_folder(ranks: RankFiles, rank: int) -> Path:
    return ranks.folder / f"part-{rank:05d}"


def tokenize_part(
    dataset: Path, tokenizer, ranks: RankFiles, plan: dict, *, model_ref, max_seq_len, overlong, template_kwargs
) -> None:
    """This rank's contiguous slice of rows, tokenized into its part folder."""
    rows, rank, world = plan["rows"], ranks.rank, ranks.world_size
    conversations = sft_data.read_conversations(dataset, rows * rank // world, rows * (rank + 1) // world)
    progress = partial(ranks.progress, what="SFT rows tokenised")
    part = sft_data.tokenize_conversations(tokenizer, conversations, max_seq_len, overlong, progress, **template_kwargs)
    save_set(part_folder(ranks, rank), part, plan["key"])
    ranks.publish("part", part.stats)


def join_ranks_parts(ranks: RankFiles, cache: Path, key: dict, dataset: Path, max_seq_len: int) -> None:
    """Rank 0, once every rank's part is written: join them into the cache, then drop the parts."""
    world = ranks.world_size
    ranks.wait("part", range(world))
    try:
        join_parts([part_folder(ranks, r) for r in range(world)], cache, key, dataset, max_seq_len)
    finally:
        for r in range(world):
            shutil.rmtree(part_folder(ranks, r), ignore_errors=True)


def save_set(folder: Path, data: TokenizedSet, key: dict) -> None:
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        for name in ARRAYS:
            np.save(tmp / f"{name}.npy", getattr(data, name))
        (tmp / "meta.json").write_text(json.dumps({"key": key, "stats": data.stats}, indent=2))


def join_parts(parts: list[Path], cache: Path, key: dict, dataset: Path, max_seq_len: int) -> None:
    """Concatenate the ranks' parts, in rank order, into the cache (streamed: one part in memory at a time)."""
    loaded = [load_cache(part) for part in parts]
    stats = {name: sum(part.stats[name] for part in loaded) for name in loaded[0].stats}
    if stats["samples"] == 0:
        raise ValueError(
            f"{dataset}: none of {stats['samples_in']} samples is left to train on "
            f"({stats['overlong_dropped']} longer than train.max_seq_len={max_seq_len} were dropped, "
            f"{stats['no_loss_dropped']} had no assistant token); raise max_seq_len or set train.overlong=truncate."
        )
    bases = np.cumsum([0] + [int(part.offsets[-1]) for part in loaded])
    with atomic_path(cache) as tmp:
        tmp.mkdir(parents=True)
        for name in ("input_ids", "labels"):
            out = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=np.int32, shape=(int(bases[-1]),))
            for part, base in zip(loaded, bases):
                out[base : base + len(getattr(part, name))] = getattr(part, name)
            out.flush()
            del out
        offsets = np.concatenate([[0]] + [part.offsets[1:] + base for part, base in zip(loaded, bases)]).astype(
            np.int64
        )
        np.save(tmp / "offsets.npy", offsets)
        (tmp / "meta.json").write_text(json.dumps({"key": key, "stats": stats}, indent=2))


def load_cache(cache: Path) -> TokenizedSet:
    arrays = {name: np.load(cache / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
    stats = json.loads((cache / "meta.json").read_text())["stats"]
    return TokenizedSet(arrays["input_ids"], arrays["labels"], np.asarray(arrays["offsets"]), stats)


def cache_key(cache: Path) -> dict:
    """The identity of the cached tokenized set (what a checkpoint's data position refers to)."""
    return json.loads((cache / "meta.json").read_text())["key"]
