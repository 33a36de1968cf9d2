"""Data-parallel engines inside one task: resources.STAGE.engines_per_task vLLM engines, each in its
own process on its own GPUs, behind the interface of one Engine.

A vLLM task normally runs one engine on model.tensor_parallel_size GPUs. Where a site allocates whole
nodes, a task asks for E × TP GPUs and runs E engines: `open_engines` starts one child process per
engine, each seeing only its own TP GPUs (CUDA_VISIBLE_DEVICES narrowed before vLLM loads; on CPU,
its own share of the cores), and returns an EngineGroup. The group renders through engine 0 (every
engine loads the same tokenizer) and deals the requests of each `stream` call round-robin (request i
to engine i mod E). Results come back as each finishes, so the stage saves them through its chunk
checkpoint as with one engine; every request carries its own seed, so a shard's records equal one
engine's. One process per engine is what vLLM asks for: its offline LLM refuses data_parallel_size > 1
in one process (vllm/entrypoints/llm.py) and points to a process per data-parallel rank.

A child that fails ends the task with its cause: its exception is raised again here (the task runner
maps it to an exit code), its exit code (EXIT_ENGINE_FAILED from its watchdog, which has written the
failure cause) becomes this process's, and a signal (the OOM killer's SIGKILL) becomes 128+signal,
which the batch script reads as that cause.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import multiprocessing
import os
import signal
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import NoReturn

from ..config import ModelConfig
from ..rundir import failures
from .engine import Completion, Engine, Refused, Sampling, vllm_device

log = logging.getLogger("svd_hpc")

STARTUP_TIMEOUT_S = 3600  # a large model from a network filesystem on a busy node
CLOSE_GRACE_S = 10  # for the engines to end on their own when closed
PR_SET_PDEATHSIG = 1  # linux/prctl.h
_open_groups: weakref.WeakSet = weakref.WeakSet()


@atexit.register  # before multiprocessing's own exit handler, which would wait for the children forever
def _close_open_groups() -> None:
    for group in list(_open_groups):
        group.close()


def open_engines(model_cfg: ModelConfig, count: int, make_engine: Callable = Engine, device: str | None = None):
    """One Engine in this process when `count` is 1, else an EngineGroup of `count` child engines.

    `make_engine(model_cfg)` builds each engine (a module-level function: the children import it);
    `device` is where they run ("cuda", "cpu"), None: where vLLM finds it.
    """
    if count == 1:
        return make_engine(model_cfg)
    return EngineGroup(model_cfg, count, make_engine, device)


def deal(size: int, count: int) -> list[list[int]]:
    """Positions 0..size-1 dealt round-robin to `count` engines: engine e gets e, e+count, e+2·count, ..."""
    return [list(range(e, size, count)) for e in range(count)]


def engine_devices(count: int, tensor_parallel: int, visible: str | None) -> list[str]:
    """Each engine's CUDA_VISIBLE_DEVICES: consecutive slices of `tensor_parallel` of the task's GPUs.

    `visible` is the task's own CUDA_VISIBLE_DEVICES ("4,5,6,7" -> "4,5" and "6,7"); None: the node's
    GPUs from 0. A task that sees fewer GPUs than the engines need is a bad allocation, told here.
    """
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible is not None else None
    if ids is None:
        ids = [str(i) for i in range(count * tensor_parallel)]
    needed = count * tensor_parallel
    if len(ids) < needed:
        raise ValueError(
            f"the task sees {len(ids)} GPU(s) (CUDA_VISIBLE_DEVICES={visible!r}) but its {count} engines of "
            f"model.tensor_parallel_size {tensor_parallel} need {needed}; check the stage's resources.gpus "
            f"and resources.engines_per_task."
        )
    return [",".join(ids[e * tensor_parallel : (e + 1) * tensor_parallel]) for e in range(count)]


def engine_cores(count: int, cores: Sequence[int]) -> list[list[int]] | None:
    """Each CPU engine's cores: contiguous, near-equal shares of the task's; None when there are
    fewer cores than engines (then they share them all)."""
    cores = sorted(cores)
    if len(cores) < count:
        return None
    bounds = [len(cores) * e // count for e in range(count + 1)]
    return [cores[bounds[e] : bounds[e + 1]] for e in range(count)]


@dataclass
class Placement:
    """Where one child engine runs: its environment, its CPU cores (None: the task's), in words."""

    env: dict[str, str]
    cores: list[int] | None
    where: str


def placements(
    count: int, tensor_parallel: int, on_gpu: bool, environ: Mapping[str, str], affinity: Iterable[int]
) -> list[Placement]:
    """Each engine's place: on GPUs its own CUDA_VISIBLE_DEVICES slice; on CPU its own share of the
    cores, unless a thread binding was already chosen (the task runner's nobind on a node whose cores
    Slurm does not pin, or the user's): that stands, and the engines split its OMP_NUM_THREADS."""
    if on_gpu:
        devices = engine_devices(count, tensor_parallel, environ.get("CUDA_VISIBLE_DEVICES"))
        return [Placement({"CUDA_VISIBLE_DEVICES": d}, None, f"GPUs {d}") for d in devices]
    threads = environ.get("OMP_NUM_THREADS", "")
    if environ.get("VLLM_CPU_OMP_THREADS_BIND"):
        env = {"OMP_NUM_THREADS": str(max(1, int(threads) // count))} if threads.isdigit() else {}
        return [Placement(dict(env), None, f"the task's cores ({env or 'threads unset'})") for _ in range(count)]
    shares = engine_cores(count, list(affinity))
    if shares is None:
        return [Placement({}, None, "the task's cores, shared") for _ in range(count)]
    return [
        Placement({"OMP_NUM_THREADS": str(len(c)), "VLLM_CPU_OMP_THREADS_BIND": "nobind"}, c, f"cores {c}")
        for c in shares
    ]


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` set, for starting one child (which copies it), then restored."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class EngineGroup:
    """`count` engines in child processes, used as one Engine (render, stream, chat)."""

    generate_tokens = Engine.generate_tokens  # both only call render and stream
    chat = Engine.chat

    def __init__(self, model_cfg: ModelConfig, count: int, make_engine: Callable = Engine, device: str | None = None):
        self.model_cfg, self.count = model_cfg, count
        self.procs: list = []
        self.conns: list[Connection] = []
        on_gpu = (device or vllm_device()) == "cuda"  # NVML only: this process never initialises CUDA
        places = placements(count, model_cfg.tensor_parallel_size, on_gpu, os.environ, os.sched_getaffinity(0))
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no vLLM or CUDA state inherited
        _open_groups.add(self)
        for e, place in enumerate(places):
            ours, theirs = context.Pipe()
            proc = context.Process(
                target=_serve,
                args=(theirs, model_cfg, make_engine, e, count, place.cores, failures.failure_file()),
                name=f"svd_hpc-engine-{e}",
            )
            with _environ(place.env):  # in the child's environment from its first instruction
                proc.start()
            theirs.close()
            self.procs.append(proc)
            self.conns.append(ours)
            log.info(f"engine {e} of {count} starting on {place.where} (pid {proc.pid})")
        ready = [self._receive(e, timeout=STARTUP_TIMEOUT_S) for e in range(count)]
        self.thinking, self.template_knows_thinking = ready[0][1], ready[0][2]
        log.info(f"{count} engines ready: model={model_cfg.path}")

    def render(
        self, conversation: list[dict], enable_thinking: bool | None = None, reply_prefix: str = ""
    ) -> list[int] | Refused:
        """Token ids of a conversation, rendered by engine 0 (see Engine.render)."""
        self.conns[0].send(("render", conversation, enable_thinking, reply_prefix))
        return self._receive(0)[1]

    def stream(
        self,
        prompts: Sequence[list[int] | Refused],
        sampling: Sampling | Sequence[Sampling],
        seeds: Sequence[int] | None = None,
    ) -> Iterator[tuple[int, list[Completion]]]:
        """(prompt index, its samples) as each finishes on any engine (see Engine.stream).

        A caller that stops early leaves the engines mid-run: the group closes and serves no more.
        """
        per_prompt = [sampling] * len(prompts) if isinstance(sampling, Sampling) else list(sampling)
        if len(per_prompt) != len(prompts) or (seeds is not None and len(seeds) != len(prompts)):
            raise ValueError("EngineGroup.stream needs one sampling and one seed per prompt.")
        shares = deal(len(prompts), self.count)
        running: dict[int, list[int]] = {}
        for e, share in enumerate(shares):
            if share:
                picked_seeds = None if seeds is None else [seeds[i] for i in share]
                self.conns[e].send(
                    ("stream", [prompts[i] for i in share], [per_prompt[i] for i in share], picked_seeds)
                )
                running[e] = share
        try:
            while running:
                ready = wait([self.conns[e] for e in running])
                for e in [e for e in running if self.conns[e] in ready]:
                    message = self._receive(e)
                    if message[0] == "end":
                        del running[e]
                    else:
                        _, position, completions = message
                        yield running[e][position], completions
        finally:
            if running:
                self.close()

    def _receive(self, e: int, timeout: float | None = None) -> tuple:
        """The next message of engine `e`; its failure ends this task with the failure's cause."""
        conn = self.conns[e]
        try:
            if timeout is not None and not conn.poll(timeout):
                self.close()
                raise RuntimeError(f"engine {e} of {self.count} did not start within {timeout:.0f}s.")
            message = conn.recv()
        except (EOFError, OSError):
            self._ended(e)
        if message[0] == "error":
            self.close()
            raise message[1]
        return message

    def _ended(self, e: int) -> NoReturn:
        """Engine `e`'s process is gone: end this task the way it ended."""
        proc = self.procs[e]
        proc.join(timeout=60)
        code = proc.exitcode
        self.close()
        if code is None or code == 0:
            raise RuntimeError(f"engine {e} of {self.count} stopped answering (exit code {code}).")
        code = 128 - code if code < 0 else code  # a signal N reads as the shell's 128+N
        log.error(f"engine {e} of {self.count} (pid {proc.pid}) ended with exit {code}; ending the task with it")
        raise SystemExit(code)

    def __del__(self) -> None:  # a body's group goes with its last reference, the children with it
        self.close()

    def close(self) -> None:
        """Stop every child engine (idempotent); one that does not stop in time is killed."""
        for conn in self.conns:
            try:
                conn.send(("close",))
            except (OSError, ValueError):
                pass
        # one grace period for all: an engine mid-batch reads no message, and a failed task should
        # not wait a grace period per engine before it ends
        deadline = time.monotonic() + CLOSE_GRACE_S
        for proc in self.procs:
            if proc.pid is None:
                continue
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                proc.kill()
                proc.join(timeout=30)
        for conn in self.conns:
            conn.close()
        self.procs, self.conns = [], []


def _die_with_parent() -> None:
    """Have the kernel kill this process when its parent dies: a task killed at its time limit or by a
    requeue must not leave engines holding the GPUs its next life needs (Linux; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before the request took effect
        os._exit(1)


def _serve(
    conn: Connection,
    model_cfg: ModelConfig,
    make_engine: Callable,
    index: int,
    count: int,
    cores: list[int] | None,
    failure_file,
) -> None:
    """A child engine: load the model, then answer the parent's render and stream requests until told to close."""
    _die_with_parent()
    if cores:  # every thread the engine starts inherits this mask
        os.sched_setaffinity(0, cores)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s [engine {index}/{count}] %(message)s")
    if failure_file is not None:
        failures.expect_failures_at(failure_file)  # where its watchdog records why the engine failed
    try:
        engine = make_engine(model_cfg)
        conn.send(("ready", engine.thinking, getattr(engine, "template_knows_thinking", False)))
        while True:
            request = conn.recv()
            if request[0] == "close":
                return
            if request[0] == "render":
                conn.send(("rendered", engine.render(*request[1:])))
            elif request[0] == "stream":
                for position, completions in engine.stream(*request[1:]):
                    conn.send(("done", position, completions))
                conn.send(("end",))
    except (EOFError, BrokenPipeError):  # the parent is gone: nobody to answer
        return
    except Exception as err:
        log.exception(f"engine {index} of {count} failed")
        try:
            conn.send(("error", err))
        except Exception:  # an exception that does not pickle: its text still tells the cause
            conn.send(("error", RuntimeError(f"engine {index} of {count}: {traceback.format_exc()}")))
        raise SystemExit(1) from None
