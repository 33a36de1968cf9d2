"""Training memory: the launch's estimate (memory_plan.train_memory) against torch's FSDP2 memory tracker.

Run as:  .venv/bin/python benchmarks/bench_memory.py [--quick]

Baseline: torch.distributed._tools.fsdp2_mem_tracker.FSDPMemTracker, counting every tensor of one
training process while the train stage's own code runs: the model built on the meta device and
wrapped by train/fsdp.py (each decoder layer, then the root; bf16 compute with fp32 reduction,
as on CUDA), the optimiser of train/model.py, and train/step.py's train_step (chunked loss head,
backward, clipping, AdamW). Tensors are fake (FakeTensorMode) and the process group is torch's
fake one, so a 16-GPU world of an 8B model at 32k tokens runs on this CPU in a minute or two. One
warm-up step first: the tracker counts DTensor's first-call sharding propagation as memory,
and AdamW's state exists from the second step on, as in every step that matters.

Two settings differ from a GPU run, each to match it: transformers' sdpa is told to build no
L×L mask (on CUDA, flash attention or flex_attention never materialise one, and the sequences
here are single, unpacked documents), and the parameter dtype follows CUDA's bf16 mixed precision.

Cases: the qwen3 4B and 8B configs as written (train.max_seq_len, micro_batch, activation
checkpointing, the cluster profile's world size) with Qwen3-4B's and Qwen3-8B's real dimensions,
and the 8B config with train.shard node. Ratio = estimate / tracker, target within 1 ± 0.10.
--quick: 4B's layer width with 2 layers at 4,096 tokens, checkpointing on and off, in seconds;
exits 1 when a ratio leaves QUICK_BAND.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svd_hpc import config  # noqa: E402
from svd_hpc.forecast import memory_plan  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
QWEN3 = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "torch_dtype": "bfloat16",
}
QWEN3_4B = {**QWEN3, "hidden_size": 2560, "intermediate_size": 9728, "tie_word_embeddings": True}
QWEN3_8B = {**QWEN3, "hidden_size": 4096, "intermediate_size": 12288, "tie_word_embeddings": False}
QUICK_BAND = (0.85, 1.15)  # the quick sizes' estimate is within 3% today; the band leaves room for torch changes


def tracked_peak(model_config: dict, *, seq_len: int, micro_batch: int, world_size: int, shard_size: int, ac: bool):
    """The tracker's peak of one training process's second step, in bytes by category."""
    import torch.distributed as dist
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    from svd_hpc.train import fsdp, sft_data, step
    from svd_hpc.train.model import build_optimizer

    sdpa_mask = ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]
    ALL_MASK_ATTENTION_FUNCTIONS["sdpa"] = lambda *args, **kwargs: None  # causal, no mask: as flash attention
    folder = Path(tempfile.mkdtemp())
    (folder / "config.json").write_text(json.dumps(model_config))
    dist.init_process_group("fake", rank=0, world_size=world_size, store=FakeStore())
    try:
        model = fsdp.build_meta_model(str(folder), "sdpa")
        fsdp.apply_fsdp(
            model, fsdp.training_mesh("cpu", world_size, shard_size), bf16=True, activation_checkpointing=ac
        )
        # the loss as the root's forward: the tracker follows FSDP through module calls, and
        # register_fsdp_forward_method's wrapper runs the same pre/post-forward hooks
        model.forward = types.MethodType(step.causal_lm_loss_sum, model)
        setattr(model, step.LOSS_METHOD, model.__call__)
        rng = np.random.default_rng(0)
        vocab, shape = model_config["vocab_size"], (micro_batch, seq_len)
        positions = np.tile(np.arange(seq_len), (micro_batch, 1))
        tokens = micro_batch * seq_len
        batch = sft_data.MicroBatch(
            rng.integers(0, vocab, shape), rng.integers(0, vocab, shape), positions, tokens, tokens
        )
        with FakeTensorMode(allow_non_fake_inputs=True):
            model.to_empty(device="cpu")
            optimizer, _ = build_optimizer(model, config.TrainConfig())
            step.train_step(model, optimizer, [batch], tokens * world_size, world_size, "cpu", 1.0)
            tracker = FSDPMemTracker(model, optimizer)
            with tracker:
                step.train_step(model, optimizer, [batch], tokens * world_size, world_size, "cpu", 1.0)
            (peak,) = tracker.get_tracker_snapshot("peak").values()
    finally:
        dist.destroy_process_group()
        # the process goes on (a test imports this): packed rows need their block-diagonal mask back
        ALL_MASK_ATTENTION_FUNCTIONS["sdpa"] = sdpa_mask
    return {getattr(kind, "value", kind): size for kind, size in peak.items()}


def config_case(name: str, path: str, model_config: dict, **overrides) -> dict:
    """A case as a config file plans it: its sequence length, micro-batch, checkpointing and world."""
    from svd_hpc.forecast import memory_check

    cfg = config.load(REPO / path, [f"{k}={v}" for k, v in overrides.items()])
    layout = memory_check.train_layout(cfg)
    return {
        "name": name,
        "model": model_config,
        "seq_len": cfg.train.max_seq_len,
        "micro_batch": cfg.train.micro_batch,
        "world_size": layout.world_size,
        "shard_size": layout.shard_size,
        "ac": layout.activation_checkpointing,
    }


def cases(quick: bool) -> list[dict]:
    if quick:
        small = {**QWEN3_4B, "num_hidden_layers": 2}
        shape = {"model": small, "seq_len": 4096, "micro_batch": 1, "world_size": 8, "shard_size": 8}
        return [
            {"name": "4B width, 2 layers, AC", **shape, "ac": True},
            {"name": "4B width, 2 layers", **shape, "ac": False},
        ]
    return [
        config_case("qwen3-4b-math", "configs/qwen3-4b-math.yaml", QWEN3_4B),
        config_case("qwen3-8b-math", "configs/qwen3-8b-math.yaml", QWEN3_8B),
        config_case("qwen3-8b-math shard=node", "configs/qwen3-8b-math.yaml", QWEN3_8B, **{"train.shard": "node"}),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"reduced sizes in seconds; exit 1 outside {QUICK_BAND}")
    args = parser.parse_args()
    failed = False
    head = f"{'case':28} {'world/shard':>11} {'seq':>6} {'AC':>3} {'estimate GiB':>12} {'tracker GiB':>11}"
    print(f"{head} {'ratio':>6}  phase")
    for case in cases(args.quick):
        began = time.perf_counter()
        shape = {k: case[k] for k in ("seq_len", "micro_batch", "world_size", "shard_size")}
        peak = tracked_peak(case["model"], **shape, ac=case["ac"])["Total"] / memory_plan.GIB
        estimate = memory_plan.train_memory(case["model"], **shape, activation_checkpointing=case["ac"])
        ratio = estimate.total_gib / peak
        failed |= args.quick and not QUICK_BAND[0] <= ratio <= QUICK_BAND[1]
        layout = f"{case['world_size']}/{case['shard_size']}"
        print(
            f"{case['name']:28} {layout:>11} {case['seq_len']:>6} {'on' if case['ac'] else 'off':>3} "
            f"{estimate.total_gib:>12.2f} {peak:>11.2f} {ratio:>6.3f}  {estimate.phase} "
            f"({time.perf_counter() - began:.0f} s)",
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
