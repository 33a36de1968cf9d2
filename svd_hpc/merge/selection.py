"""The merge rules as pure functions on Arrow data: vote thresholds, selection per question, dedup.

Every rule depends only on the candidates themselves, never on the order shards are read in:
- A candidate passes when its status is not "filtered" or "skipped" and every enabled stage (verify.stages minus
  merge.disabled_stages) meets the threshold over the votes recorded for that stage: unanimous (all
  yes, at least one vote), majority (more than half yes) or k_of_v (at least k yes). A -1 vote (no
  verdict) counts as no; a stage never reached (null) fails.
- Seed questions identical after whitespace and case normalisation form one group; the group's
  candidates are taken in (question_id, candidate_index) order, as if they were one question, so the
  copy with the lowest question_id that has a passing candidate supplies the pick.
- Selection per group: the first `limit` passing candidates in that order. limit is
  merge.max_per_question when set, else 1 for first-valid and unlimited for all-valid.
- Then, among the selected candidates, solutions identical after whitespace normalisation are kept
  once: the copy with the lowest (question_id, candidate_index) survives. Dedup runs after
  selection, so a question whose only pick repeats another question's pick is left out rather than
  falling back to a later candidate (that would need every passing candidate's text hashed).
- Last, merge.domain_weights: a domain of weight w keeps round(w × n) of its n kept rows, those whose
  keyed hash of (question_id, candidate_index) is lowest (`weighted_out`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import VERIFY_STAGES, MergeConfig
from ..sampling import aggregation

WEIGHT_KEY = b"domain_weights"  # keys the hash that draws a weighted domain's rows (any fixed key would do)

DIGEST_BYTES = 16


def normalise_solution(text: str) -> str:
    """The text solutions are compared by: whitespace runs become one space, ends stripped."""
    return " ".join(text.split())


def normalise_question(question: str) -> str:
    """The text seed questions are compared by: normalised whitespace, case folded."""
    return " ".join(question.split()).casefold()


def digest(data: bytes) -> bytes:
    """16 bytes of SHA-256: as collision-safe as needed here, and the fastest (SHA-NI) in hashlib."""
    return hashlib.sha256(data).digest()[:DIGEST_BYTES]


def normalised_digests(array: pa.Array | pa.ChunkedArray, fold_case: bool = False) -> pa.FixedSizeBinaryArray:
    """digest(normalise_solution(v)), or of normalise_question(v) with fold_case, per value, as binary(16).

    Equal to the per-value definition (null counts as ""), but ASCII values are normalised with a few
    numpy passes over the Arrow data buffer, with no Python object per word: that is what makes
    split/join or a \\s+ regex slow on long texts. Other values take the definition itself.
    """
    array = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
    n = len(array)
    if n == 0:
        return keys_array(np.zeros(0, f"S{DIGEST_BYTES}"))
    width = np.int64 if array.type in (pa.large_string(), pa.large_binary()) else np.int32
    offsets = np.frombuffer(array.buffers()[1], width)[array.offset : array.offset + n + 1].astype(np.int64)
    data = array.buffers()[2]
    raw = bytes(memoryview(data)[offsets[0] : offsets[-1]]) if data is not None else b""
    chars = np.frombuffer(raw.translate(_SPACE_TO_BLANK), np.uint8)
    blank = chars == 32
    # a blank right after a blank goes; across a boundary that only removes a leading blank, stripped anyway
    dropped = np.flatnonzero(blank[1:] & blank[:-1]) + 1  # few: runs are rare next to single blanks
    keep = np.ones(len(chars), bool)
    keep[dropped] = False
    packed = chars[keep]
    if fold_case:
        packed = _LOWER[packed]
    bounds = offsets - offsets[0]
    bounds = bounds - np.searchsorted(dropped, bounds)  # minus the bytes dropped before each boundary
    starts, stops = bounds[:-1], bounds[1:]
    if len(packed):  # strip one blank at each end (the index clipping only matters for empty texts)
        last = len(packed) - 1
        starts = starts + ((stops > starts) & (packed[np.minimum(starts, last)] == 32))
        stops = stops - ((stops > starts) & (packed[np.maximum(stops - 1, 0)] == 32))
    view, sha256 = memoryview(packed), hashlib.sha256
    out = [sha256(view[a:b]).digest()[:DIGEST_BYTES] for a, b in zip(starts.tolist(), stops.tolist())]
    is_ascii = pc.fill_null(pc.string_is_ascii(array), True).to_numpy(zero_copy_only=False)
    normalise = normalise_question if fold_case else normalise_solution
    for i in np.flatnonzero(~is_ascii).tolist():  # wide spaces and case folding beyond ASCII
        out[i] = digest(normalise(array[i].as_py()).encode())
    return keys_array(np.frombuffer(b"".join(out), f"S{DIGEST_BYTES}"))


# str.split() whitespace in the ASCII range (UTF-8 never uses these bytes inside a longer character)
_SPACE_TO_BLANK = bytes.maketrans(b"\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f", b" " * 9)
_LOWER = np.arange(256, dtype=np.uint8)
_LOWER[ord("A") : ord("Z") + 1] += 32


# ----------------------------------------------------------------------------- thresholds


def vote_counts(votes: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Yes votes and recorded votes per candidate; recorded is -1 where the stage was never reached."""
    chunks = votes.chunks if isinstance(votes, pa.ChunkedArray) else [votes]
    yes_parts, total_parts = [], []
    for chunk in chunks:
        if pa.types.is_null(chunk.type):
            yes_parts.append(np.zeros(len(chunk), np.int32))
            total_parts.append(np.full(len(chunk), -1, np.int32))
            continue
        flat = pc.list_flatten(chunk).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(chunk).to_numpy()
        yes_parts.append(np.bincount(parents[flat == 1], minlength=len(chunk)).astype(np.int32))
        total_parts.append(pc.fill_null(pc.list_value_length(chunk), -1).to_numpy().astype(np.int32))
    if not yes_parts:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    return np.concatenate(yes_parts), np.concatenate(total_parts)


def meets_threshold(yes: np.ndarray, total: np.ndarray, merge_cfg: MergeConfig) -> np.ndarray:
    """Whether a stage's votes meet merge.aggregation (null stages have total -1 and fail)."""
    return aggregation.passes(yes, total, merge_cfg.aggregation, merge_cfg.k, section="merge")


def enabled_stages(merge_cfg: MergeConfig, stages: list[str]) -> list[str]:
    return [s for s in stages if s not in merge_cfg.disabled_stages]


def stage_votes(table: pa.Table) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """vote_counts of every stage column present in the table."""
    return {s: vote_counts(table[f"{s}_votes"]) for s in VERIFY_STAGES if f"{s}_votes" in table.column_names}


def stage_funnel(table: pa.Table, merge_cfg: MergeConfig, stages: list[str], votes=None) -> dict[str, np.ndarray]:
    """Cumulative masks in cascade order: not filtered (nor skipped), then passed each enabled stage so far."""
    votes = votes if votes is not None else stage_votes(table)
    # a skipped candidate was never judged in full: it must not pass, even with its stage disabled
    judged = pc.invert(pc.is_in(table["status"], value_set=pa.array(["filtered", "skipped"])))
    ok = pc.fill_null(judged, True).to_numpy(zero_copy_only=False)
    masks = {"unfiltered": ok}
    for stage in enabled_stages(merge_cfg, stages):
        ok = ok & meets_threshold(*votes[stage], merge_cfg)
        masks[stage] = ok
    return masks


def passes(table: pa.Table, merge_cfg: MergeConfig, stages: list[str]) -> pa.BooleanArray:
    """Which candidates meet every enabled stage's threshold and were not filtered."""
    return pa.array(list(stage_funnel(table, merge_cfg, stages).values())[-1], pa.bool_())


def votes_summed(votes: dict[str, tuple[np.ndarray, np.ndarray]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Yes votes and recorded votes over every stage (the SFT record's votes_yes, votes_total)."""
    yes_sum, total_sum = np.zeros(n, np.int32), np.zeros(n, np.int32)
    for yes, total in votes.values():
        yes_sum += yes
        total_sum += np.maximum(total, 0)
    return yes_sum, total_sum


# ----------------------------------------------------------------------------- selection


def selection_limit(merge_cfg: MergeConfig) -> int | None:
    """Candidates kept per question: max_per_question when set, 1 for first-valid, None = all."""
    if merge_cfg.max_per_question is not None:
        if merge_cfg.max_per_question < 1:
            raise ValueError(f"merge.max_per_question must be at least 1, got {merge_cfg.max_per_question}.")
        return merge_cfg.max_per_question
    return 1 if merge_cfg.selection == "first-valid" else None


def run_starts(values) -> np.ndarray:
    """True where a sorted sequence (numpy or Arrow) starts a new run of equal values."""
    if len(values) == 0:
        return np.zeros(0, bool)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return np.r_[True, pc.not_equal(values[1:], values[:-1]).to_numpy(zero_copy_only=False)]
    return np.r_[True, values[1:] != values[:-1]]


def rank_in_group(order: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Position of each row within its group, given `order` that sorts rows by (group, rank key)."""
    starts = np.flatnonzero(run_starts(groups[order]))
    position = np.empty(len(order), np.int64)
    position[order] = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return position


def first_per_question(question_codes: np.ndarray, candidate_index: np.ndarray, limit: int | None) -> np.ndarray:
    """Mask of the first `limit` rows per question (integer codes) in candidate_index order."""
    if limit is None:
        return np.ones(len(question_codes), bool)
    return rank_in_group(np.lexsort((candidate_index, question_codes)), question_codes) < limit


@dataclass
class Resolution:
    """The merge decision for every candidate that reached it, aligned with the candidates table."""

    question_ids: pa.Array  # every distinct question_id, sorted (a question's rank is its row here)
    question_group: np.ndarray  # per question: rank of its group's first question (question dedup)
    candidate_rank: np.ndarray  # per candidate: rank of its question
    selected: np.ndarray  # picked for its group by the selection rule
    kept: np.ndarray  # selected and not a repeat of an earlier selected solution

    @property
    def duplicate_questions(self) -> np.ndarray:
        return self.question_group != np.arange(len(self.question_group))


def _first_of_each(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Mask of rows that are the first, in `order`, with their value."""
    _, first = np.unique(values[order], return_index=True)
    mask = np.zeros(len(values), bool)
    mask[order[first]] = True
    return mask


def keys_array(keys: np.ndarray) -> pa.FixedSizeBinaryArray:
    """The inverse of as_keys (numpy's tolist() would strip trailing zero bytes)."""
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(DIGEST_BYTES), len(keys), [None, pa.py_buffer(keys.tobytes())]
    )


def as_keys(binary16: pa.Array | pa.ChunkedArray) -> np.ndarray:
    array = binary16.combine_chunks() if isinstance(binary16, pa.ChunkedArray) else binary16
    if len(array) == 0:
        return np.zeros(0, f"S{DIGEST_BYTES}")
    raw = np.frombuffer(array.buffers()[1], dtype=f"S{DIGEST_BYTES}")
    return raw[array.offset : array.offset + len(array)]


def resolve(
    questions: pa.Table,
    candidates: pa.Table,
    limit: int | None,
    group_questions: bool = True,
    dedup_solutions: bool = True,
) -> Resolution:
    """Question groups, selection per group and solution dedup over every shard's candidates.

    group_questions false: every question id is its own group; dedup_solutions false: equal picks all stay
    (merge.group_questions, merge.dedup_solutions: the authors do neither).

    questions: question_id, question_digest (binary16), one row per question per shard.
    candidates: question_id, candidate_index, shard, solution_digest (binary16); all passing.
    """
    # one entry per question_id (a question seen in two shards keeps its smallest digest)
    questions = questions.sort_by([("question_id", "ascending"), ("question_digest", "ascending")])
    qids = questions["question_id"].combine_chunks()
    first = run_starts(qids)
    qids = qids.filter(pa.array(first))
    qdigest = as_keys(questions["question_digest"].filter(pa.array(first)))
    # a group is named by its lowest-ranked question: the first in rank order with that digest
    ranks = np.arange(len(qids))
    leaders = _first_of_each(qdigest, ranks)
    _, label = np.unique(qdigest, return_inverse=True)
    leader_of_label = np.empty(label.max() + 1 if len(label) else 0, np.int64)
    leader_of_label[label[leaders]] = ranks[leaders]
    question_group = leader_of_label[label] if len(label) else np.zeros(0, np.int64)
    if not group_questions:
        question_group = ranks

    crank = pc.index_in(candidates["question_id"], value_set=qids).to_numpy(zero_copy_only=False)
    if len(crank) and np.isnan(crank.astype(float)).any():
        raise ValueError("a candidate's question_id has no question row; this is a bug in the merge pass.")
    crank = crank.astype(np.int64)
    cidx = candidates["candidate_index"].to_numpy(zero_copy_only=False).astype(np.int64)
    shard = candidates["shard"].to_numpy(zero_copy_only=False).astype(np.int64)
    group = question_group[crank] if len(crank) else np.zeros(0, np.int64)
    in_order = np.lexsort((shard, cidx, crank, group))
    selected = rank_in_group(in_order, group) < (limit if limit is not None else np.iinfo(np.int64).max)
    # dedup among the selected: the lowest (question_id, candidate_index) copy survives
    by_key = np.lexsort((shard, cidx, crank))
    by_key = by_key[selected[by_key]]
    kept = _first_of_each(as_keys(candidates["solution_digest"]), by_key) & selected if dedup_solutions else selected
    return Resolution(qids, question_group, crank, selected, kept)


# ----------------------------------------------------------------------------- domain weights


def row_hash(question_id: str, candidate_index: int) -> int:
    """The draw of a row under merge.domain_weights: a 64-bit keyed hash, the same in every process."""
    data = f"{question_id}\x00{candidate_index}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, key=WEIGHT_KEY).digest(), "big")


def weighted_out(
    kept: np.ndarray, domain: list[str], question_id: list[str], candidate_index: list[int], weights: dict[str, float]
) -> np.ndarray:
    """Mask of the kept rows merge.domain_weights leaves out (row-aligned lists; unnamed domains weigh 1).

    A domain of weight w keeps round(w × n), halves up, of its n kept rows: those with the lowest
    row_hash, a draw without replacement that depends on the rows alone.
    """
    out = np.zeros(len(kept), bool)
    domains = np.array(domain, dtype=object)
    for name, weight in weights.items():
        rows = np.flatnonzero(kept & (domains == name))
        keep = int(np.floor(weight * len(rows) + 0.5))
        if keep >= len(rows):
            continue
        draw = np.array([row_hash(question_id[i], candidate_index[i]) for i in rows.tolist()], np.uint64)
        out[rows[np.argsort(draw, kind="stable")[keep:]]] = True
    return out
