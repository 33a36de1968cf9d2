"""GPU check before an overnight run: FSDP2 training and a vLLM engine on one CUDA GPU, in minutes.

Run as:  bash scripts/gpu-check.sh   (or .venv/bin/python -m svd_hpc.gpu_check)

Each check runs in its own process, so one check's CUDA state never reaches the next (vLLM must
start in a process that has not touched CUDA):
  train   FSDP2 (a world of one, NCCL), bf16, the attention train picks (flash_attn's varlen
          kernels or flex_attention), the chunked loss head, on builtin:smollm2 and two rows of
          packed dialogues (micro_batch 2):
          - loss head: chunked lm_head + cross-entropy equals the full-logits loss (fp32)
          - packing: the packed micro-batch's loss equals the sum of each sample's loss alone;
            the loss with the restarts removed (samples attending each other) is printed beside
            it, to show the difference the check would catch
          - steps: 6 optimiser steps on that batch are finite and lower its loss
  engine  where CUDA vLLM is installed: svd_hpc.sampling.engine.Engine with tensor_parallel_size=1 starts
          and writes a reply
One line per check; exit 1 if any failed. Without a CUDA GPU it says so and exits 0.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

MODEL = "builtin:smollm2"
SEQ_LEN = 1024  # two rows of this: 2,048 tokens, two LOSS_CHUNKs
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


def dialogues(n: int) -> list[list[dict]]:
    """Arithmetic dialogues of varied length, so several pack into one row."""
    rows = []
    for i in range(n):
        a, b = 3 * i + 7, 5 * i + 2
        steps = " ".join(f"Add {a} and {b} digit by digit: step {k}." for k in range(1 + i % 9))
        rows.append(
            [
                {"role": "user", "content": f"What is {a} + {b}?"},
                {"role": "assistant", "content": f"{steps} The answer is {a + b}."},
            ]
        )
    return rows


def check_train() -> bool:
    import torch

    from . import config
    from .inputs import models
    from .stages import train
    from .train import fsdp, sft_data

    for key in TORCH_ENV:  # a world of one, whatever the shell exported
        os.environ.pop(key, None)
    d = fsdp.init_distributed()
    model_dir = models.resolve(MODEL)
    tokenizer = sft_data.load_tokenizer(model_dir)
    data = sft_data.tokenize_conversations(tokenizer, dialogues(64), SEQ_LEN, "drop")
    stream = sft_data.PackedStream(data, SEQ_LEN, seed=0, pad_id=tokenizer.pad_token_id or 0)
    t = config.TrainConfig(max_seq_len=SEQ_LEN, lr=1e-4, warmup_ratio=0.0, steps=6, grad_clip=1.0)
    model, _ = train.build_model(model_dir, t, d)
    ok = report(
        "model",
        True,
        f"{MODEL} on {torch.cuda.get_device_name(d.device)}, "
        f"attention {model.config._attn_implementation}, bf16, FSDP2",
    )

    gen = torch.Generator(device=d.device).manual_seed(0)
    hidden = torch.randn(3000, 256, device=d.device, generator=gen, requires_grad=True)
    weight = torch.randn(50000, 256, device=d.device, generator=gen) / 16
    labels = torch.randint(0, 50000, (3000,), device=d.device, generator=gen)
    chunked = train.token_loss_sum(hidden, weight, labels)
    full = torch.nn.functional.cross_entropy(hidden @ weight.T, labels, reduction="sum")
    diff = abs(float(chunked - full)) / float(full)
    ok &= report("loss head", diff <= 1e-5, f"chunked vs full logits, relative difference {diff:.1e} (<= 1e-5)")

    batch = stream.micro_batch([0, 1])
    samples = [s for r in (0, 1) for s in stream.pack_at(r)]
    leaky = sft_data.MicroBatch(
        batch.input_ids,
        batch.labels,
        torch.arange(batch.input_ids.shape[1]).expand(2, -1).numpy(),
        batch.tokens,
        batch.loss_tokens,
    )
    model.eval()
    with torch.no_grad():
        packed = float(train.loss_sum(model, batch, d.device))
        alone = sum(float(train.loss_sum(model, stream.batch_of([[s]]), d.device)) for s in samples)
        mixed = float(train.loss_sum(model, leaky, d.device))
    model.train()
    diff, leak = abs(packed - alone) / alone, abs(mixed - alone) / alone
    ok &= report(
        "packing",
        diff <= PACKING_TOLERANCE,
        f"{len(samples)} samples in 2 rows: packed vs alone {diff:.1e} (<= {PACKING_TOLERANCE:.0e}); "
        f"samples attending each other would give {leak:.1e}",
    )

    optimizer, scheduler = train.build_optimizer(model, t)
    torch.cuda.reset_peak_memory_stats()
    began, losses = time.perf_counter(), []
    for _ in range(t.steps):
        loss, norm = train.train_step(model, optimizer, [batch], batch.loss_tokens, 1, d.device, t.grad_clip)
        scheduler.step()
        losses.append(float(loss) / batch.loss_tokens)
    finite = all(map(lambda x: x == x and abs(x) != float("inf"), losses))
    ok &= report(
        "train steps",
        finite and losses[-1] < losses[0],
        f"loss {' '.join(f'{x:.3f}' for x in losses)}; {time.perf_counter() - began:.1f} s, "
        f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB",
    )
    torch.distributed.destroy_process_group()
    return ok


def check_engine() -> bool:
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


def main() -> int:
    if len(sys.argv) == 2 and sys.argv[1] in ("train", "engine"):
        return 0 if {"train": check_train, "engine": check_engine}[sys.argv[1]]() else 1
    count, what = gpu_count()
    if count == 0:
        print(f"no CUDA GPU here ({what}): nothing to check; run this on a GPU node.")
        return 0
    print(f"{count} CUDA GPU(s) visible ({what}); checking on one")
    failed = []
    for check in ("train", "engine"):
        result = subprocess.run([sys.executable, "-m", "svd_hpc.gpu_check", check])
        if result.returncode != 0:
            failed.append(check)
            print(f"[FAIL] {check}: exit code {result.returncode} (its output is above)", flush=True)
    print("all checks passed" if not failed else f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
