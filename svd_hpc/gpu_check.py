"""GPU check before an overnight run: the night's training shape and a vLLM engine on one CUDA GPU.

Run as:  bash scripts/gpu-check.sh --config configs/X.yaml [key.sub=value ...]
         (or .venv/bin/python -m svd_hpc.gpu_check --config ...; the config and overrides as launch takes them)

Each check runs in its own process, so one check's CUDA state never reaches the next (vLLM must
start in a process that has not touched CUDA):
  train   FSDP2 (a world of one, NCCL), bf16, the attention train picks (flash_attn's varlen
          kernels or flex_attention), the chunked loss head, on a random model of the configured
          train model's widths (hidden, intermediate, heads, kv-heads, head_dim, vocab, from its
          config.json) with CHECK_LAYERS decoder layers, at train.max_seq_len and micro_batch, with
          activation checkpointing as train decides it:
          - loss head: chunked lm_head + cross-entropy equals the full-logits loss (fp32)
          - packing: the packed row's loss equals the sum of each sample's loss alone; the loss
            with the restarts removed (samples attending each other) is printed beside it, to
            show the difference the check would catch
          - steps: optimiser steps at three pack widths (dynamic shapes, as packs come) are
            finite and lower the loss; prints how many graphs torch.compile built for them
            (flex_attention recompiles) and the peak memory beside the pre-flight estimate
  engine  where CUDA vLLM is installed: svd_hpc.sampling.engine.Engine with tensor_parallel_size=1 starts
          and writes a reply (builtin:smollm2)
One line per check; exit 1 if any failed. Without a GPU it says so and exits 0, unless
`nvidia-smi -L` lists GPUs that torch cannot see: then it names why (device_guard) and exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

MODEL = "builtin:smollm2"  # the engine check's model
CHECK_LAYERS = 2  # enough for FSDP2's per-layer sharding (the last layer stays gathered) at any width
CHECK_LR = 1e-4  # large enough that a few steps lower a random model's loss whatever the config's lr
CHECKS = ("train", "engine")
PACKING_TOLERANCE = 5e-3  # relative; bf16 kernels on different shapes differ by ~1e-3
TORCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def gpu_count() -> tuple[int, str]:
    """Visible CUDA GPUs and a description, asked in a child process (this one stays CUDA-free)."""
    probe = (
        "import torch; "
        "print(torch.cuda.device_count() if torch.version.cuda else 0, torch.__version__, torch.version.cuda)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return 0, f"torch failed to load: {result.stderr.strip().splitlines()[-1:]}"
    count, version, cuda = result.stdout.split()
    return int(count), f"torch {version}, CUDA {cuda}"


def report(name: str, ok: bool, detail: str) -> bool:
    print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)
    return ok


def check_model_config(cfg):
    """The configured train model's transformers config (its config.json) cut to CHECK_LAYERS layers."""
    from transformers import AutoConfig

    from .inputs import models

    reference, revision = models.train_base(cfg)
    data = AutoConfig.from_pretrained(reference, revision=revision).to_dict()
    data["num_hidden_layers"] = CHECK_LAYERS
    data.pop("layer_types", None)  # one per layer: rebuilt for the new depth
    return AutoConfig.for_model(data.pop("model_type"), **data)


def pack_widths(max_seq_len: int) -> list[int]:
    """Three widths of packed rows, the longest first: max_seq_len and two odd shorter ones, so the
    attention sees new shapes as real packs give it (flex_attention recompiles on each new one)."""
    return [max_seq_len, max_seq_len * 3 // 4 + 1, max_seq_len // 2 + 3]


def packed_rows(widths: list[int], rows: int, vocab: int, seed: int = 0):
    """Random-token samples packed three to a row; for each width, `rows` rows of that width.

    Returns the stream and, per width, its rows of sample indices (PackedStream.batch_of's input).
    Each sample is half prompt (no loss) and half reply, like the SFT data's dialogues.
    """
    from .train import sft_data

    rng = np.random.default_rng(seed)
    ids, labels, lengths, batches = [], [], [], []
    for width in widths:
        batch = []
        for _ in range(rows):
            cut = sorted(rng.choice(np.arange(16, width - 16), size=2, replace=False))
            row = []
            for n in np.diff([0, *cut, width]):
                sample = rng.integers(0, vocab, size=n).tolist()
                ids += sample
                labels += sft_data.shifted_labels(sample, [i >= n // 2 for i in range(n)])
                row.append(len(lengths))
                lengths.append(n)
            batch.append(row)
        batches.append(batch)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    data = sft_data.TokenizedSet(np.array(ids, np.int32), np.array(labels, np.int32), offsets, {})
    return sft_data.PackedStream(data, max(widths), seed=seed, pad_id=0), batches


def estimated_gib(model_config, *, seq_len: int, micro_batch: int, activation_checkpointing: bool) -> float:
    """The pre-flight estimate of one rank's training memory for this shape (forecast/memory_plan.py)."""
    from .forecast import memory_plan

    plan = memory_plan.train_memory(
        model_config.to_dict(),
        seq_len=seq_len,
        micro_batch=micro_batch,
        world_size=1,
        shard_size=1,
        activation_checkpointing=activation_checkpointing,
    )
    return plan.total_gib


def compiled_graphs() -> int:
    """Graphs torch.compile has built in this process (flex_attention's among them)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def check_train(cfg) -> bool:
    import torch

    from .inputs import models
    from .train import fsdp, sft_data
    from .train import model as train_model
    from .train.step import loss_sum, token_loss_sum, train_step

    for key in TORCH_ENV:  # a world of one, whatever the shell exported
        os.environ.pop(key, None)
    d = fsdp.init_distributed()
    cuda = d.device.type == "cuda"
    shape = check_model_config(cfg)
    t = dataclasses.replace(cfg.train, lr=CHECK_LR, warmup_ratio=0.0, steps=6, grad_clip=1.0)
    widths = pack_widths(t.max_seq_len)
    checkpointing = train_model.activation_checkpointing(t)
    with tempfile.TemporaryDirectory(prefix="svd_hpc-gpu-check-") as folder, torch.device(d.device):
        models.write_random_model(f"{folder}/model", shape, dtype=torch.bfloat16 if cuda else None)
        model, _ = train_model.build_model(f"{folder}/model", t, d)
    ok = report(
        "model",
        True,
        f"{models.train_base(cfg)[0]}'s widths with {CHECK_LAYERS} layers (hidden {shape.hidden_size}, "
        f"intermediate {shape.intermediate_size}, heads {shape.num_attention_heads}/{shape.num_key_value_heads}, "
        f"head_dim {shape.head_dim}, vocab {shape.vocab_size}), random, on "
        f"{torch.cuda.get_device_name(d.device) if cuda else 'CPU'}, attention {model.config._attn_implementation}, "
        f"{'bf16' if cuda else 'fp32'}, FSDP2, activation checkpointing {'on' if checkpointing else 'off'}",
    )

    gen = torch.Generator(device=d.device).manual_seed(0)
    hidden = torch.randn(3000, 256, device=d.device, generator=gen, requires_grad=True)
    weight = torch.randn(50000, 256, device=d.device, generator=gen) / 16
    labels = torch.randint(0, 50000, (3000,), device=d.device, generator=gen)
    chunked = token_loss_sum(hidden, weight, labels)
    full = torch.nn.functional.cross_entropy(hidden @ weight.T, labels, reduction="sum")
    diff = abs(float(chunked - full)) / float(full)
    ok &= report("loss head", diff <= 1e-5, f"chunked vs full logits, relative difference {diff:.1e} (<= 1e-5)")

    stream, rows = packed_rows(widths, t.micro_batch, shape.vocab_size)
    batches = [stream.batch_of(r) for r in rows]
    batch, samples = batches[-1], rows[-1][0]
    row = stream.batch_of([samples])
    leaky = sft_data.MicroBatch(
        row.input_ids, row.labels, np.arange(row.input_ids.shape[1])[None], row.tokens, row.loss_tokens
    )
    model.eval()
    with torch.no_grad():
        packed = float(loss_sum(model, row, d.device))
        alone = sum(float(loss_sum(model, stream.batch_of([[s]]), d.device)) for s in samples)
        mixed = float(loss_sum(model, leaky, d.device))
    model.train()
    diff, leak = abs(packed - alone) / alone, abs(mixed - alone) / alone
    ok &= report(
        "packing",
        diff <= PACKING_TOLERANCE,
        f"{len(samples)} samples in a row of {row.tokens} tokens: packed vs alone {diff:.1e} "
        f"(<= {PACKING_TOLERANCE:.0e}); samples attending each other would give {leak:.1e}",
    )

    optimizer, scheduler = train_model.build_optimizer(model, t)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    graphs = compiled_graphs()
    began, losses = time.perf_counter(), []
    for step in range(t.steps):
        batch = batches[step % len(batches)]
        loss, norm = train_step(model, optimizer, [batch], batch.loss_tokens, 1, d.device, t.grad_clip)
        scheduler.step()
        losses.append(float(loss) / batch.loss_tokens)
    finite = all(x == x and abs(x) != float("inf") for x in losses)
    first, again = losses[: len(widths)], losses[len(widths) : 2 * len(widths)]
    ok &= report(
        "train steps",
        finite and sum(again) < sum(first),
        f"widths {', '.join(map(str, widths))} × micro_batch {t.micro_batch}, twice: loss "
        f"{' '.join(f'{x:.3f}' for x in losses)}; {time.perf_counter() - began:.1f} s; "
        f"torch.compile built {compiled_graphs() - graphs} graphs (flex_attention recompiles)",
    )
    estimate = estimated_gib(
        shape, seq_len=widths[0], micro_batch=t.micro_batch, activation_checkpointing=checkpointing
    )
    planned = f"estimated {estimate:.2f} GiB"
    peak = f"{torch.cuda.max_memory_allocated(d.device) / 2**30:.2f} GiB" if cuda else "not measured on CPU"
    print(f"[INFO] memory: peak {peak}; {planned}; {widths[0]} tokens × micro_batch {t.micro_batch}", flush=True)
    torch.distributed.destroy_process_group()
    return ok


def check_engine(cfg) -> bool:
    if importlib.util.find_spec("vllm") is None:
        print("[SKIP] engine: vllm is not installed", flush=True)
        return True
    from .config import ModelConfig
    from .sampling import engine

    device = engine.vllm_device()  # before anything touches CUDA
    if device != "cuda":
        print(
            f"[SKIP] engine: the installed vllm runs on {device}, not CUDA (bash scripts/install.sh cuda)", flush=True
        )
        return True
    began = time.perf_counter()
    llm = engine.Engine(ModelConfig(path=MODEL, tensor_parallel_size=1, max_model_len=2048, gpu_memory_utilization=0.5))
    (reply,) = llm.chat(
        [[{"role": "user", "content": "What is 2 + 3?"}]], engine.Sampling(n=1, temperature=0.0, max_tokens=32)
    )[0]
    return report(
        "engine",
        reply.completion_tokens > 0,
        f"vLLM on CUDA, tensor_parallel_size=1: {reply.completion_tokens} "
        f"tokens in {time.perf_counter() - began:.0f} s "
        f"(start included): {reply.text.strip()[:60]!r}",
    )


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line: --config and overrides (key=value, anywhere) as launch takes them, and
    the one check to run in this process (the script's own child processes pass it)."""
    check = argv[0] if argv and argv[0] in CHECKS else None  # first, so no override is taken for it
    argv = argv[1:] if check else argv
    parser = argparse.ArgumentParser(prog="bash scripts/gpu-check.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the run config the night will launch")
    args, extra = parser.parse_known_args(argv)
    args.check = check
    args.overrides = [token for token in extra if "=" in token and not token.startswith("-")]
    if extra != args.overrides:
        parser.parse_args(argv)  # exits with argparse's message about what it does not know
    return args


def unusable_gpus() -> str | None:
    """Why the GPUs nvidia-smi lists are out of torch's reach, or None where it lists none."""
    from .runner import device_guard

    listed = device_guard.listed_gpus()
    if not listed:
        return None
    reason = device_guard.cuda_unusable_reason() or "no known cause found (CUDA_VISIBLE_DEVICES, cgroups?)"
    return f"nvidia-smi lists {len(listed)} GPU(s) ({listed[0]}) but torch sees none: {reason}"


def main(argv: list[str] | None = None) -> int:
    from . import config

    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        cfg = config.load(args.config, args.overrides)
    except config.ConfigError as err:
        print(f"config: {err}", file=sys.stderr)
        return 2
    if args.check:
        return 0 if {"train": check_train, "engine": check_engine}[args.check](cfg) else 1
    count, what = gpu_count()
    if count == 0:
        unusable = unusable_gpus()
        if unusable:
            print(f"[FAIL] {unusable} ({what})", flush=True)
            return 1
        print(f"no CUDA GPU here ({what}): nothing to check; run this on a GPU node.")
        return 0
    print(f"{count} CUDA GPU(s) visible ({what}); checking {args.config} on one")
    failed = []
    for check in CHECKS:
        command = [sys.executable, "-m", "svd_hpc.gpu_check", check, "--config", args.config, *args.overrides]
        result = subprocess.run(command)
        if result.returncode != 0:
            failed.append(check)
            print(f"[FAIL] {check}: exit code {result.returncode} (its output is above)", flush=True)
    print("all checks passed" if not failed else f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
