"""SFT data for the train stage: chat template, assistant-only labels, packing, deterministic order.

A conversation is rendered with the tokenizer's chat template and tokenized piece by piece: the
prompt part of each assistant turn (what `add_generation_prompt` renders) carries no loss, the
assistant's reply (through its end-of-turn token) does. Labels are stored already shifted
(label[t] is the token at t+1), and the last token of every sample has none, so a sample never
learns to predict the first token of the one packed after it.

Samples are packed into sequences of at most `max_seq_len` tokens (best-fit decreasing), with
position ids restarting at 0 for every sample: transformers' attention (sdpa/eager masks,
flash-attention varlen) turns those restarts into a block-diagonal mask, so packed samples never
attend to each other. The pack order is a pure function of (seed, epoch): step s of any run,
resumed or not and whatever the world size, sees the same global batch.

The tokenized set is cached on disk by the training ranks together: sft_cache.py.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from .. import records

log = logging.getLogger("svd_hpc")

IGNORE = -100  # label of tokens that carry no loss (torch cross_entropy's ignore_index)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(model_dir: str):
    """The model's tokenizer, which must exist and carry a chat template."""
    from transformers import AutoTokenizer

    local = Path(model_dir)
    if local.is_dir() and not any((local / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(
            f"model directory {local} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer next to the weights or set train.model to a folder that has one."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load a tokenizer from {model_dir}: {err}") from None
    if not tokenizer.chat_template:
        raise ValueError(f"the tokenizer of {model_dir} has no chat template; SFT needs one to render conversations.")
    return tokenizer


def open_dataset(path: Path) -> pq.ParquetFile:
    """The SFT parquet file, which must exist and hold rows."""
    if not path.is_file():
        raise ValueError(f"SFT dataset {path} does not exist; run the merge stage first.")
    parquet = pq.ParquetFile(path)
    if parquet.metadata.num_rows == 0:
        raise ValueError(f"SFT dataset {path} has no rows: the merge kept no sample, so there is nothing to train on.")
    return parquet


def read_conversations(path: Path, start: int = 0, stop: int | None = None) -> list[list[dict]]:
    """The `messages` column of an SFT parquet file (records.SFT), rows [start, stop), checked up front.

    Only the row groups holding those rows are read, so each rank reads its own slice.
    """
    parquet = open_dataset(path)
    records.check_schema(parquet.schema_arrow.empty_table(), records.SFT, str(path))
    rows = parquet.metadata.num_rows
    stop = rows if stop is None else min(stop, rows)
    if start >= stop:
        return []
    groups, first, at = [], None, 0
    for group in range(parquet.num_row_groups):
        end = at + parquet.metadata.row_group(group).num_rows
        if at < stop and end > start:
            groups.append(group)
            first = at if first is None else first
        at = end
    column = parquet.read_row_groups(groups, columns=["messages"]).column("messages")
    conversations = column.slice(start - first, stop - start).to_pylist()
    for i, messages in enumerate(conversations, start):
        if not messages or not any(m["role"] == "assistant" for m in messages):
            raise ValueError(f"{path}: row {i} has no assistant message; every SFT row needs one to learn from.")
    return conversations


def encode_conversation(tokenizer, messages: list[dict], **template_kwargs) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and, per token, whether it carries loss.

    Each assistant turn's span is what its render adds to the render of the turns before it
    plus the generation prompt; trailing whitespace after the end-of-turn token carries none.
    """
    full = tokenizer.apply_chat_template(messages, tokenize=False, **template_kwargs)
    pieces: list[tuple[str, bool]] = []
    done = 0  # characters of `full` already assigned to a piece
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(
            messages[:i], tokenize=False, add_generation_prompt=True, **template_kwargs
        )
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False, **template_kwargs)
        if not (upto.startswith(before) and full.startswith(upto) and len(before) >= done):
            # Templates that re-render earlier turns (e.g. dropping old think blocks) cannot be
            # split there; such a turn stays context, and the last turn (always consistent) learns.
            continue
        reply = upto[len(before) :].rstrip()
        pieces += [(full[done : len(before)], False), (reply, True)]
        done = len(before) + len(reply)
    pieces.append((full[done:], False))
    ids: list[int] = []
    mask: list[bool] = []
    for text, trained in pieces:
        if text:
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            mask += [trained] * len(piece)
    return ids, mask


@dataclass
class TokenizedSet:
    """All samples as flat arrays: sample i is input_ids[offsets[i]:offsets[i+1]] (labels likewise)."""

    input_ids: np.ndarray  # int32
    labels: np.ndarray  # int32, shifted; IGNORE where no loss
    offsets: np.ndarray  # int64, len = samples + 1
    stats: dict

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.input_ids[lo:hi], self.labels[lo:hi]


def shifted_labels(ids: list[int], mask: list[bool]) -> list[int]:
    """label[t] = ids[t+1] where token t+1 carries loss; the last token predicts nothing."""
    return [ids[t + 1] if mask[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]


def tokenize_conversations(
    tokenizer, conversations: list[list[dict]], max_seq_len: int, overlong: str, progress=None, **template_kwargs
) -> TokenizedSet:
    """Encode every conversation; overlong ones are truncated or dropped (counted in stats).

    `progress(done, total)`, if given, is called after each conversation.
    """
    all_ids: list[np.ndarray] = []
    all_labels: list[np.ndarray] = []
    stats = {"samples_in": len(conversations), "overlong_truncated": 0, "overlong_dropped": 0, "no_loss_dropped": 0}
    for done, messages in enumerate(conversations, 1):
        if progress:
            progress(done - 1, len(conversations))
        ids, mask = encode_conversation(tokenizer, messages, **template_kwargs)
        labels = shifted_labels(ids, mask)
        if len(ids) > max_seq_len:
            if overlong == "drop":
                stats["overlong_dropped"] += 1
                continue
            stats["overlong_truncated"] += 1
            ids, labels = ids[:max_seq_len], labels[:max_seq_len]
            labels[-1] = IGNORE  # its target was cut off
        if all(label == IGNORE for label in labels):
            stats["no_loss_dropped"] += 1  # e.g. a truncation that cut the whole reply
            continue
        all_ids.append(np.asarray(ids, dtype=np.int32))
        all_labels.append(np.asarray(labels, dtype=np.int32))
    if progress:
        progress(len(conversations), len(conversations))
    lengths = np.array([len(a) for a in all_ids], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    stats["samples"] = len(all_ids)
    stats["tokens"] = int(offsets[-1])
    stats["loss_tokens"] = int(sum(int((a != IGNORE).sum()) for a in all_labels))
    empty = np.zeros(0, dtype=np.int32)
    return TokenizedSet(
        np.concatenate(all_ids) if all_ids else empty,
        np.concatenate(all_labels) if all_labels else empty,
        offsets,
        stats,
    )


def pack(lengths: np.ndarray, max_seq_len: int, seed: int) -> list[list[int]]:
    """Group sample indices into packs of at most max_seq_len tokens, in a seeded random order.

    Best-fit decreasing: longest samples first, each into the fullest pack it still fits
    (ties broken by the seeded shuffle), so packs come out nearly full.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    order = order[np.argsort(-lengths[order], kind="stable")]
    packs: list[list[int]] = []
    space: list[tuple[int, int]] = []  # (free tokens, pack index), sorted
    for i in order:
        need = int(lengths[i])
        at = bisect.bisect_left(space, (need, -1))
        if at < len(space):
            free, p = space.pop(at)
        else:
            free, p = max_seq_len, len(packs)
            packs.append([])
        packs[p].append(int(i))
        if free - need > 0:
            bisect.insort(space, (free - need, p))
    return [packs[p] for p in rng.permutation(len(packs))]


@dataclass
class MicroBatch:
    """One forward pass: [rows, L] tensors as numpy, padded at the end of each row."""

    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    tokens: int  # non-padding tokens
    loss_tokens: int  # tokens that carry loss

    def torch(self, device):
        import torch

        return {
            name: torch.as_tensor(np.asarray(getattr(self, name), dtype=np.int64), device=device)
            for name in ("input_ids", "labels", "position_ids")
        }


class PackedStream:
    """Packs in training order over endless epochs; epoch e is packed with seed + e."""

    def __init__(self, data: TokenizedSet, max_seq_len: int, seed: int, pad_id: int):
        self.data = data
        self.max_seq_len = max_seq_len
        self.seed = seed
        self.pad_id = pad_id
        self._epochs: list[list[list[int]]] = []

    def epoch(self, e: int) -> list[list[int]]:
        while len(self._epochs) <= e:
            self._epochs.append(pack(self.data.lengths, self.max_seq_len, self.seed + len(self._epochs)))
        return self._epochs[e]

    def pack_at(self, index: int) -> list[int]:
        """The index-th pack of the endless stream."""
        e = 0
        while index >= len(self.epoch(e)):
            index -= len(self.epoch(e))
            e += 1
        return self.epoch(e)[index]

    def micro_batch(self, pack_indices: list[int]) -> MicroBatch:
        return self.batch_of([self.pack_at(i) for i in pack_indices])

    def batch_of(self, rows: list[list[int]]) -> MicroBatch:
        """Rows of sample indices as one padded batch, positions restarting at every sample."""
        width = max(int(self.data.lengths[r].sum()) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        labels = np.full((len(rows), width), IGNORE, dtype=np.int64)
        positions = np.zeros((len(rows), width), dtype=np.int64)
        tokens = 0
        for row, samples in enumerate(rows):
            at = 0
            for s in samples:
                sample_ids, sample_labels = self.data.sample(s)
                n = len(sample_ids)
                ids[row, at : at + n] = sample_ids
                labels[row, at : at + n] = sample_labels
                positions[row, at : at + n] = np.arange(n)  # restart: the attention boundary
                at += n
            positions[row, at:] = np.arange(width - at)  # padding forms its own block
            tokens += at
        return MicroBatch(ids, labels, positions, tokens, int((labels != IGNORE).sum()))

    def step_batches(
        self, step: int, global_batch: int, world_size: int, rank: int, micro_batch: int
    ) -> list[MicroBatch]:
        """This rank's micro-batches of optimiser step `step` (global packs step*G .. step*G+G-1)."""
        base = step * global_batch
        per_micro = world_size * micro_batch
        return [
            self.micro_batch([base + m * per_micro + rank * micro_batch + j for j in range(micro_batch)])
            for m in range(global_batch // per_micro)
        ]
