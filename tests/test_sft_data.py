"""SFT data: assistant-only loss, packing boundaries, deterministic order, bad input (in-process, CPU)."""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from svd_hpc import records
from svd_hpc.inputs import models
from svd_hpc.stages import train
from svd_hpc.train import sft_cache, sft_data
from svd_hpc.train.rank_files import RankFiles

QUESTION = "What is 2 + 3?"
REPLY = "<think>\nadd them\n</think>\n\nThe answer is \\boxed{5}."


@pytest.fixture(scope="module")
def tiny_dir():
    return models.resolve("builtin:tiny-qwen3")


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return sft_data.load_tokenizer(tiny_dir)


def conversation(question=QUESTION, reply=REPLY):
    return [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]


def write_sft(path, conversations, row_group_size=None):
    rows = [
        {"messages": m, "question_id": str(i), "candidate_index": 0, "domain": "math", "votes_yes": 3, "votes_total": 3}
        for i, m in enumerate(conversations)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=records.SFT), path, row_group_size=row_group_size)
    return path


def test_loss_only_on_the_assistant_reply(tokenizer):
    ids, mask = sft_data.encode_conversation(tokenizer, conversation())
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    context = tokenizer.decode([i for i, m in zip(ids, mask) if not m])
    assert trained == REPLY + "<|im_end|>"
    assert context == f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n\n"
    # the pieces are exactly the rendered conversation
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(conversation(), tokenize=False)


def test_every_assistant_turn_of_a_dialogue_is_trained(tokenizer):
    dialogue = conversation() + [
        {"role": "user", "content": "And 2 + 4?"},
        {"role": "assistant", "content": "It is 6."},
    ]
    ids, mask = sft_data.encode_conversation(tokenizer, dialogue)
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert trained == REPLY + "<|im_end|>" + "It is 6.<|im_end|>"


def test_labels_are_shifted_and_never_cross_a_sample():
    ids = [10, 11, 12, 13, 14]
    mask = [False, False, True, True, True]
    assert sft_data.shifted_labels(ids, mask) == [-100, 12, 13, 14, -100]


def test_overlong_samples_are_truncated_or_dropped_and_counted(tokenizer):
    short, long = conversation(), conversation(reply="word " * 200)
    kept = sft_data.tokenize_conversations(tokenizer, [short, long], 64, "truncate")
    assert kept.stats["overlong_truncated"] == 1 and len(kept) == 2
    assert kept.lengths.max() == 64 and kept.sample(1)[1][-1] == sft_data.IGNORE
    dropped = sft_data.tokenize_conversations(tokenizer, [short, long], 64, "drop")
    assert dropped.stats["overlong_dropped"] == 1 and len(dropped) == 1


def test_bad_input_is_one_clear_sentence(tmp_path, tiny_dir, tokenizer):
    with pytest.raises(ValueError, match="does not exist; run the merge stage"):
        sft_data.read_conversations(tmp_path / "missing.parquet")
    with pytest.raises(ValueError, match="has no rows"):
        sft_data.read_conversations(write_sft(tmp_path / "empty.parquet", []))
    only_user = [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="row 0 has no assistant message"):
        sft_data.read_conversations(write_sft(tmp_path / "user.parquet", [only_user]))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="has no tokenizer"):
        sft_data.load_tokenizer(str(tmp_path / "weights"))
    long = write_sft(tmp_path / "long.parquet", [conversation(reply="word " * 200)])
    with pytest.raises(ValueError, match="none of 1 samples is left"):
        sft_cache.prepare(long, tmp_path / "cache", tokenizer, model_ref=tiny_dir, max_seq_len=32, overlong="drop")


def test_prepare_caches_and_notices_a_changed_dataset(tmp_path, tiny_dir, tokenizer):
    path = write_sft(tmp_path / "train.parquet", [conversation()] * 3)
    first = sft_cache.prepare(path, tmp_path / "cache", tokenizer, model_ref=tiny_dir, max_seq_len=128, overlong="drop")
    cached = sft_cache.load_cache(tmp_path / "cache")
    assert np.array_equal(first.input_ids, cached.input_ids) and np.array_equal(first.labels, cached.labels)
    write_sft(path, [conversation()] * 5)
    assert (
        len(
            sft_cache.prepare(path, tmp_path / "cache", tokenizer, model_ref=tiny_dir, max_seq_len=128, overlong="drop")
        )
        == 5
    )


def test_the_set_is_the_same_however_many_ranks_tokenize_it(tmp_path, tiny_dir, tokenizer):
    """1, 2 or 3 ranks (threads here, processes in test_train) give the single pass's tokens, labels,
    offsets, stats, cache key (a checkpoint's `order`) and packs; slices cross parquet row groups."""
    rows = [conversation(f"What is {i} + 3?", REPLY * (1 + i % 4)) for i in range(11)]
    rows.insert(5, conversation(reply="word " * 200))  # dropped as overlong, in the middle of a slice
    path = write_sft(tmp_path / "train.parquet", rows, row_group_size=4)
    expected = sft_data.tokenize_conversations(tokenizer, rows, 96, "drop")
    assert 0 < len(expected) < len(rows) - 1  # the check covers drops (overlong and REPLY * 4)
    key = {
        "dataset": sft_cache.file_digest(path),
        "model": tiny_dir,
        "max_seq_len": 96,
        "overlong": "drop",
        "template_kwargs": {},
        "version": 1,
    }
    for world in (1, 2, 3):
        cache, folder = tmp_path / f"cache-{world}", tmp_path / f"handoff-{world}"

        def rank(r, world=world, cache=cache, folder=folder):  # a tokenizer per thread, as per process
            own = sft_data.load_tokenizer(tiny_dir)
            return sft_cache.prepare(
                path, cache, own, model_ref=tiny_dir, max_seq_len=96, overlong="drop", ranks=RankFiles(folder, r, world)
            )

        with ThreadPoolExecutor(world) as pool:
            results = list(pool.map(rank, range(world)))
        for got in results:
            for name in ("input_ids", "labels", "offsets"):
                assert np.array_equal(getattr(got, name), getattr(expected, name)), (world, name)
            assert got.stats == expected.stats
        assert sft_cache.cache_key(cache) == key
        assert sft_data.pack(results[0].lengths, 96, seed=3) == sft_data.pack(expected.lengths, 96, seed=3)
        assert not any(folder.glob("part-*"))  # the parts are deleted once joined


def test_a_long_wait_logs_progress_and_a_failure_ends_it(tmp_path, monkeypatch, caplog):
    """Rank 0 waiting for rank 1 logs the ranks' progress; rank 1's error ends the wait within a poll."""
    from svd_hpc.train import rank_files

    caplog.set_level("INFO", logger="svd_hpc")
    monkeypatch.setattr(rank_files, "LOG_SECONDS", 0.0)
    monkeypatch.setattr(rank_files, "POLL_SECONDS", 0.05)
    rank0, rank1 = RankFiles(tmp_path, 0, 2), RankFiles(tmp_path, 1, 2)
    rank1.progress(3, 10, what="SFT rows tokenised")  # the last row has not been reached: recorded at the first call
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(rank0.wait, "part", [0, 1])
        rank0.publish("part", {"rows": 5})
        time.sleep(0.3)
        assert not waiting.done()
        with pytest.raises(ValueError, match="row 7 is bad"), rank1.reporting():
            raise ValueError("row 7 is bad")
        began = time.monotonic()
        with pytest.raises(ValueError, match="row 7 is bad"):
            waiting.result(timeout=5)
        assert time.monotonic() - began < 20 * rank_files.POLL_SECONDS  # within polls, not at the 5 s timeout
    assert (
        "waiting" in caplog.text
        and "for part of rank(s) [1]; 3 of 10 SFT rows tokenised on the 1 of 2 rank(s)" in caplog.text
    )
    with pytest.raises(ValueError, match="row 7 is bad"):  # a working rank stops too
        rank0.progress(1, 10)


def test_packing_is_full_complete_and_seeded():
    lengths = np.random.default_rng(1).integers(20, 700, size=400)
    packs = sft_data.pack(lengths, 1024, seed=7)
    assert sorted(i for p in packs for i in p) == list(range(400))
    assert all(lengths[p].sum() <= 1024 for p in packs)
    assert lengths.sum() / (len(packs) * 1024) > 0.95
    assert packs == sft_data.pack(lengths, 1024, seed=7)
    assert packs != sft_data.pack(lengths, 1024, seed=8)


def tokenized(lengths, vocab=400, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=int(sum(lengths))).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    labels = np.concatenate([np.append(ids[a + 1 : b], sft_data.IGNORE) for a, b in zip(offsets[:-1], offsets[1:])])
    return sft_data.TokenizedSet(ids, labels.astype(np.int32), offsets, {})


def test_a_global_batch_is_the_same_whatever_the_world_size():
    stream = sft_data.PackedStream(tokenized([30, 50, 20, 90, 60, 40, 70, 10] * 3), 128, seed=3, pad_id=0)

    def step_rows(world, micro):
        rows = []
        for rank in range(world):
            for batch in stream.step_batches(5, 8, world, rank, micro):
                rows += [tuple(r[r != 0]) for r in batch.input_ids]
        return sorted(rows)

    assert step_rows(1, 1) == step_rows(2, 1) == step_rows(4, 2) == step_rows(2, 4)
    assert step_rows(1, 1) != sorted(tuple(r[r != 0]) for b in stream.step_batches(6, 8, 1, 0, 8) for r in b.input_ids)


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=400,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_packed_samples_never_attend_to_each_other(arch, tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir) if arch == "qwen3" else tiny_llama()
    model.eval()
    data = tokenized([23, 41, 17])
    stream = sft_data.PackedStream(data, 128, seed=0, pad_id=0)
    packed = stream.micro_batch([0])
    assert sorted(stream.pack_at(0)) == [0, 1, 2]  # all three share one sequence
    with torch.no_grad():
        logits = model(**{k: v for k, v in packed.torch("cpu").items() if k != "labels"}, use_cache=False).logits[0]
        at = 0
        for s in stream.pack_at(0):
            ids, _ = data.sample(s)
            alone = model(torch.as_tensor(ids, dtype=torch.long)[None], use_cache=False).logits[0]
            torch.testing.assert_close(logits[at : at + len(ids)], alone, atol=1e-5, rtol=1e-5)
            at += len(ids)
        # the same tokens with positions that do not restart do see each other: the check can fail
        contiguous = torch.arange(at)[None]
        leaky = model(torch.as_tensor(packed.input_ids[:, :at]), position_ids=contiguous, use_cache=False).logits[0]
        assert (leaky - logits[:at]).abs().max() > 1e-3
        # the packed loss is the sum of the samples' own losses
        separate = sum(train.loss_sum(model, stream.batch_of([[s]]), "cpu") for s in stream.pack_at(0))
        torch.testing.assert_close(train.loss_sum(model, packed, "cpu"), separate, atol=1e-4, rtol=1e-5)
