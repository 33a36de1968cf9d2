"""Packed samples stay apart in every attention path training uses, and none builds an L×L mask
where a sparse one exists: what transformers' attention functions receive, recorded at the boundary."""

import sys
import types

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.modeling_flash_attention_utils import _is_packed_sequence
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from svd_hpc.inputs import models
from svd_hpc.stages import train
from svd_hpc.train import fsdp, sft_data

SEQ_LEN = 128


@pytest.fixture(scope="module")
def stream():
    from test_train import sft_rows

    model_dir = models.resolve("builtin:tiny-qwen3")
    data = sft_data.tokenize_conversations(sft_data.load_tokenizer(model_dir), sft_rows(12), SEQ_LEN, "drop")
    return sft_data.PackedStream(data, SEQ_LEN, seed=0, pad_id=0)


def tiny_model(attention: str):
    model = AutoModelForCausalLM.from_pretrained(models.resolve("builtin:tiny-qwen3"), attn_implementation=attention)
    return model.eval()


def unpacked_loss(stream, rows: list[int]) -> float:
    """Each sample of the packs alone, one forward per sample: what packing must reproduce."""
    model = tiny_model("sdpa")
    samples = [s for r in rows for s in stream.pack_at(r)]
    assert len(samples) > len(rows)  # the packs really hold several samples each
    with torch.no_grad():
        return float(sum(train.loss_sum(model, stream.batch_of([[s]]), "cpu") for s in samples))


def flash_like(calls):
    """transformers' flash-attention dispatch (modeling_flash_attention_utils._flash_attention_forward):
    varlen over the position-id segments when `_is_packed_sequence`, else plain causal over each row.
    The kernels are stood in for by SDPA, as flash_attn needs a GPU."""

    def attend(module, query, key, value, attention_mask, scaling=None, position_ids=None, **kwargs):
        calls.append({"query": tuple(query.shape), "position_ids": position_ids, "mask": attention_mask})
        key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
        value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        if _is_packed_sequence(position_ids, query.shape[0]):
            starts = (position_ids[0] == 0).nonzero().flatten().tolist() + [query.shape[2]]
            out = torch.cat(
                [
                    sdpa(query[..., a:b, :], key[..., a:b, :], value[..., a:b, :], is_causal=True, scale=scaling)
                    for a, b in zip(starts, starts[1:])
                ],
                dim=2,
            )
        else:
            out = sdpa(query, key, value, is_causal=True, scale=scaling)
        return out.transpose(1, 2), None

    return attend


def record_masks(monkeypatch, implementation: str) -> list:
    """The attention masks `implementation` is called with, recorded while it runs as usual."""
    real = ALL_ATTENTION_FUNCTIONS[implementation]
    masks = []

    def record(module, query, key, value, attention_mask, **kwargs):
        masks.append(attention_mask)
        return real(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._local_mapping, implementation, record)
    return masks


def test_flash_attention_gets_a_micro_batch_as_one_row_with_position_restarts(stream, monkeypatch):
    calls = []
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._local_mapping, "flash_attention_2", flash_like(calls))
    model = tiny_model("sdpa")
    model.config._attn_implementation = "flash_attention_2"
    batch = stream.micro_batch([0, 1])  # micro_batch = 2
    with torch.no_grad():
        loss = float(train.loss_sum(model, batch, "cpu"))
    first = calls[0]
    assert first["query"][0] == 1 and first["query"][2] == batch.input_ids.size  # [1, heads, 2·L, dim]
    assert first["mask"] is None  # no padding mask: transformers' flash path goes by the position ids
    assert first["position_ids"].tolist() == [batch.position_ids.reshape(-1).tolist()]
    assert _is_packed_sequence(first["position_ids"], 1)  # so the varlen kernel runs
    assert loss == pytest.approx(unpacked_loss(stream, [0, 1]), rel=1e-5)


@pytest.mark.slow  # flex_attention compiled on CPU (~100 s)
@pytest.mark.readme_claim  # README "What would have stopped a CUDA run": flex_attention with a block mask
def test_flex_attention_gets_a_block_mask_and_keeps_packed_samples_apart(stream, monkeypatch):
    """Forward only: flex_attention has no backward on CPU (torch nn/attention/flex_attention.py,
    _validate_device), which is why CPU training takes sdpa; GPUs train through this path."""
    from torch.nn.attention.flex_attention import BlockMask

    masks = record_masks(monkeypatch, "flex_attention")
    model = tiny_model("flex_attention")
    with torch.no_grad():
        loss = float(train.loss_sum(model, stream.micro_batch([0, 1]), "cpu"))
    assert masks and all(isinstance(m, BlockMask) for m in masks)  # block-sparse, no [.., L, L] tensor
    assert loss == pytest.approx(unpacked_loss(stream, [0, 1]), rel=1e-5)


def test_sdpa_on_cpu_builds_the_dense_mask_flex_avoids(stream, monkeypatch):
    masks = record_masks(monkeypatch, "sdpa")
    batch = stream.micro_batch([0, 1])
    with torch.no_grad():
        loss = float(train.loss_sum(tiny_model("sdpa"), batch, "cpu"))
    width = batch.input_ids.shape[1]
    assert masks[0].shape == (2, 1, width, width)
    assert loss == pytest.approx(unpacked_loss(stream, [0, 1]), rel=1e-5)


def test_attention_choice(monkeypatch):
    assert fsdp.attention_implementation(torch.device("cpu")) == "sdpa"
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # not installed: import fails
    assert fsdp.attention_implementation(torch.device("cuda", 0)) == "flex_attention"
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    assert fsdp.attention_implementation(torch.device("cuda", 0)) == "flash_attention_2"
