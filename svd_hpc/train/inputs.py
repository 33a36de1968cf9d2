"""What every training rank needs before its first step: the model folder, tokenizer and packed SFT stream.

Rank 0 looks the model up once for the job; ranks hand results over through files in
<run>/train/.handoff/<attempt>/ (rank_files.py), so no rank sits in a collective while others work.
"""

from __future__ import annotations

import logging
import shutil
import socket
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch.distributed as dist

from ..inputs import models
from . import fsdp, sft_cache, sft_data
from .rank_files import RankFiles

log = logging.getLogger("svd_hpc")


@dataclass
class TrainInputs:
    ref: str  # the model as configured (hub id or folder)
    model_dir: str  # a folder holding its files
    tokenizer: object
    stream: sft_data.PackedStream
    order: dict  # what fixes the data order; a checkpoint resumes only under the same


def rank0_first(ranks: RankFiles, name: str, fn):
    """`fn()` on rank 0 only; every rank gets its (JSON) result, handed over through files.

    No collective waits meanwhile, so `fn` may take longer than the process group's timeout.
    Call it inside `ranks.reporting()`: an error on rank 0 then reaches every rank.
    """
    if ranks.rank == 0:
        ranks.publish(name, fn())
    return ranks.wait(name, [0])[0]


def local_model_dir(ref: str, revision: str | None) -> str:
    """A folder with the model's files: local paths as they are, hub ids via the HF cache (one lookup)."""
    if Path(ref).is_dir():
        return ref
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(ref, revision=revision)
    except Exception as err:  # the hub client raises many types; all mean "cannot get it"
        raise ValueError(f"cannot fetch model '{ref}' ({type(err).__name__}: {err}); use a local folder.") from None


def prepare_data(cfg, d: fsdp.Dist, dataset: Path, out: Path) -> TrainInputs:
    """Model folder, tokenizer and the packed stream (all ranks tokenize into out/data, once)."""
    t = cfg.train
    if t.global_batch % (d.world_size * t.micro_batch):
        raise ValueError(
            f"train.global_batch={t.global_batch} is not divisible by world size {d.world_size} × "
            f"train.micro_batch {t.micro_batch}; choose a multiple of {d.world_size * t.micro_batch}."
        )
    attempt = [uuid.uuid4().hex if d.rank == 0 else None]
    dist.broadcast_object_list(attempt, src=0)  # at once: no rank has work to do before this
    ranks = RankFiles(out / ".handoff" / attempt[0], d.rank, d.world_size)
    cache = out / "data"
    with ranks.reporting():
        ref, revision = models.train_base(cfg)
        model_dir = rank0_first(ranks, "model_dir", partial(local_model_dir, ref, revision))
        if not Path(model_dir).is_dir():
            raise ValueError(
                f"rank 0 found model '{ref}' in {model_dir}, which rank {d.rank} on {socket.gethostname()} cannot see; "
                "put the hub cache (HF_HOME) on a filesystem every node shares."
            )
        tokenizer = sft_data.load_tokenizer(model_dir)
        data = sft_cache.prepare(
            dataset,
            cache,
            tokenizer,
            model_ref=ref,
            max_seq_len=t.max_seq_len,
            overlong=t.overlong,
            ranks=ranks,
            template_kwargs={"enable_thinking": cfg.model.thinking != "off"},
        )
    dist.barrier()  # short: every rank has just read the same last hand-off
    if d.rank == 0:
        shutil.rmtree(ranks.folder.parent, ignore_errors=True)  # this attempt's and any failed one's
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stream = sft_data.PackedStream(data, t.max_seq_len, t.seed, pad_id or 0)
    if d.rank == 0:
        log_sft_set(stream, t)
    order = {"data": sft_cache.cache_key(cache), "seed": t.seed, "global_batch": t.global_batch}
    return TrainInputs(ref=ref, model_dir=model_dir, tokenizer=tokenizer, stream=stream, order=order)


def log_sft_set(stream: sft_data.PackedStream, t) -> None:
    stats = stream.data.stats
    log.info(
        f"SFT set: {stats['samples']} of {stats['samples_in']} samples, {stats['tokens']} tokens "
        f"({stats['loss_tokens']} with loss); overlong ({t.overlong}): {stats['overlong_truncated']} truncated, "
        f"{stats['overlong_dropped']} dropped; {stats['no_loss_dropped']} without assistant tokens dropped"
    )
    if len(stream.epoch(0)) < t.global_batch:
        log.warning(
            f"one epoch packs into {len(stream.epoch(0))} sequences, fewer than train.global_batch={t.global_batch}"
        )
