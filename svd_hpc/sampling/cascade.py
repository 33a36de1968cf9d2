"""The self-judging cascade: candidates judged stage by stage, V votes each, and their VERDICT records.

Stages run in verify.stages order (cycle consistency, factuality, correctness by default). Each
stage is one batched engine run over every candidate still alive, with the V votes of a candidate
drawn as one request with n=V, so its prompt is prefilled once and shared through the prefix
cache. Replies are saved every verify.chunk_size requests as they finish (rundir/chunks.py), so a
killed task redoes at most one chunk of judging. A candidate rejected at a stage goes no further
(its later vote lists stay null). A candidate whose judge request the engine cannot run (too long,
refused by the template or vLLM) leaves the cascade there as "skipped", with the reason: never
passed, never silently rejected. The verify stage (stages/verify.py) and the eval stage's UQ-TTC
baseline both call `run_cascade`/`judge`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from ..config import VERIFY_STAGES, ModelConfig, VerifyConfig
from ..records import CANDIDATE, VERDICT
from ..rundir.chunks import Checkpoint
from ..rundir.progress import TaskProgress
from . import aggregation, prompts
from .engine import Engine, Sampling, request_seed, stage_sampling

log = logging.getLogger("svd_hpc")
STAGE = "verify"


@dataclass
class CascadeItem:
    """One candidate to judge: its question and its final answer part (never the think block)."""

    question: str
    answer: str
    key: str = ""  # stable identity (e.g. "question_id/candidate") for per-request seeds; default: position


@dataclass
class CascadeResult:
    votes: dict[str, list[int] | None] = field(default_factory=lambda: {s: None for s in VERIFY_STAGES})
    inferred_questions: list[str] | None = None
    status: str = "passed"  # passed | rejected | skipped
    failed_stage: str | None = None
    skip_reason: str | None = None  # a judge request of this item the engine could not run
    prompt_tokens: int = 0  # judge prompt tokens, counted once per request (n samples share it)
    completion_tokens: int = 0
    samples: int = 0  # judge completions drawn: inferred questions plus votes
    judge_texts: dict[str, list[str]] = field(default_factory=dict)
    # per stage, parallel to votes: whether each vote's reply hit verify.max_tokens (cut off)
    cut_off: dict[str, list[bool] | None] = field(default_factory=lambda: {s: None for s in VERIFY_STAGES})


def aggregate(votes: Sequence[int], rule: str, k: int | None = None) -> bool:
    """Whether a stage passes by verify.aggregation (the rule itself: svd_hpc/sampling/aggregation.py)."""
    return aggregation.votes_pass(votes, rule, k, section="verify")


def votes_per_inference(votes: int, inferences: int) -> list[int]:
    """Cycle votes spread round-robin over the inferred questions: with one inferred question all
    V votes compare it (the authors' code); with V of them, one vote each (the paper's count)."""
    if inferences > votes:
        raise ValueError(f"verify.cycle_inferences ({inferences}) must not exceed verify.votes ({votes}).")
    return [votes // inferences + (1 if j < votes % inferences else 0) for j in range(inferences)]


def judge_sampling(cfg: VerifyConfig) -> Sampling:
    """The sampling of one judge's V votes (each cascade stage's, and UQ-TTC's)."""
    return stage_sampling(cfg, n=cfg.votes)


class _Cascade:
    """The state of one cascade run: results so far and which items are still alive."""

    # the task's progress file, in candidate-stages: an item's votes of a stage make one unit
    tracker: TaskProgress | None = None

    def __init__(
        self, engine: Engine, items: Sequence[CascadeItem], cfg: VerifyConfig, checkpoint: Checkpoint, style: str
    ):
        self.engine, self.items, self.cfg, self.checkpoint = engine, list(items), cfg, checkpoint
        self.style = prompts.check_style(style)  # prompts.style: whose words the judges are asked in
        self.keys = [it.key or str(i) for i, it in enumerate(self.items)]
        self.results = [CascadeResult() for _ in self.items]
        self.sampling = judge_sampling(cfg)
        self.judge_sampling = dataclasses.replace(self.sampling, stop=list(cfg.judge_stop), include_stop=True)

    def ask(self, stage: str, requests: list[tuple[int, str, int, int]]) -> list[list[str]]:
        """One engine run for a step of the cascade: requests are (item, prompt, n, sub-index);
        returns texts. Replies already in the checkpoint are not asked again; new ones go to it
        as they finish.

        Judge replies (every stage but cycle_infer) open with verify.verdict_prefix and end at a
        verify.judge_stop string; the texts returned include both, so the verdict parser sees
        the reply as a whole.
        """
        judge = stage != "cycle_infer"
        sampling = self.judge_sampling if judge else self.sampling
        prefix = self.cfg.verdict_prefix if judge else ""
        keys = [f"{stage}/{self.keys[i]}/{sub}" for i, _, _, sub in requests]
        todo = [j for j, key in enumerate(keys) if key not in self.checkpoint]
        if self.tracker and judge:  # replies saved by an earlier attempt
            asked = set(todo)
            self.tracker.update(
                sum(r[2] for j, r in enumerate(requests) if j not in asked) / self.cfg.votes, resumed=True
            )
        if todo:
            seed = self.engine.model_cfg.seed
            rendered = [
                self.engine.render([{"role": "user", "content": requests[j][1]}], reply_prefix=prefix) for j in todo
            ]
            samplings = [dataclasses.replace(sampling, n=requests[j][2]) for j in todo]
            seeds = [request_seed(seed, STAGE, stage, self.keys[requests[j][0]], requests[j][3]) for j in todo]
            for t, completions in self.engine.stream(rendered, samplings, seeds):
                skipped = completions[0].skip_reason if completions else None
                reply = {
                    "texts": [] if skipped else [prefix + c.text for c in completions],
                    "prompt_tokens": completions[0].prompt_tokens if completions and not skipped else 0,
                    "completion_tokens": sum(c.completion_tokens for c in completions),
                    "cut_off": [] if skipped else [c.finish_reason == "length" for c in completions],
                    "skipped": skipped,
                }
                self.checkpoint.add(keys[todo[t]], reply)
                if self.tracker:
                    self.tracker.update(
                        requests[todo[t]][2] / self.cfg.votes if judge else 0, reply["completion_tokens"]
                    )
            # the next step needs every reply of this one: save the last, partial chunk too
            self.checkpoint.flush()
        texts = []
        for (i, _, _, _), key in zip(requests, keys):
            reply = self.checkpoint[key]
            result = self.results[i]
            result.prompt_tokens += reply["prompt_tokens"]  # counted once per request (n samples share it)
            result.completion_tokens += reply["completion_tokens"]
            result.samples += len(reply["texts"])
            texts.append(list(reply["texts"]))
            if reply.get("skipped") and not result.skip_reason:
                result.skip_reason = reply["skipped"]  # the item leaves the cascade at this stage
            if judge:
                flags = reply.get("cut_off", [False] * len(texts[-1]))
                result.cut_off[stage] = (result.cut_off[stage] or []) + list(flags)
            if self.cfg.keep_judge_text:
                result.judge_texts.setdefault(stage, []).extend(texts[-1])
        return texts

    def run_stage(self, stage: str, alive: list[int]) -> None:
        """Record every vote of `stage` for the alive items."""
        if stage == "cycle":
            inferences = self.cfg.cycle_inferences
            counts = votes_per_inference(self.cfg.votes, inferences)
            infer = [(i, prompts.infer_question_prompt(self.items[i].answer, self.style), inferences, 0) for i in alive]
            for i, texts in zip(alive, self.ask("cycle_infer", infer)):
                self.results[i].inferred_questions = [
                    prompts.inferred_question(t, self.cfg.inferred_question) for t in texts
                ]
            requests = [
                (i, prompts.cycle_judge_prompt(self.items[i].question, q, self.style), counts[j], j)
                for i in alive
                for j, q in enumerate(self.results[i].inferred_questions)
            ]
        else:
            build = prompts.JUDGE_PROMPTS[stage]
            requests = [
                (i, build(self.items[i].question, self.items[i].answer, self.style), self.cfg.votes, 0) for i in alive
            ]
        for i in alive:
            self.results[i].votes[stage] = []
        for (i, _, _, _), texts in zip(requests, self.ask(stage, requests)):
            self.results[i].votes[stage].extend(prompts.parse_verdict(t, self.cfg.verdict_rule) for t in texts)

    def settle(self, stage: str, alive: list[int]) -> list[int]:
        """Apply the aggregation rule; rejected and skipped items leave the cascade here."""
        survivors = []
        for i in alive:
            result = self.results[i]
            if result.skip_reason:  # never judged in full at this stage: not a candidate, whatever its votes
                result.status, result.failed_stage = "skipped", stage
                result.votes[stage] = result.cut_off[stage] = None
            elif aggregate(result.votes[stage], self.cfg.aggregation, self.cfg.k):
                survivors.append(i)
            else:
                result.status, result.failed_stage = "rejected", stage
        if self.tracker:  # who leaves here needs none of the later stages
            self.tracker.update(
                (len(alive) - len(survivors)) * (len(self.cfg.stages) - 1 - self.cfg.stages.index(stage))
            )
        return survivors


def fingerprint(
    model_cfg: ModelConfig, items: Sequence[CascadeItem], verify_cfg: VerifyConfig, style: str = "ours"
) -> str:
    """What decides the judges' replies: the model, the verify settings, the prompts and the items judged."""
    settings = {"model": dataclasses.asdict(model_cfg), "verify": dataclasses.asdict(verify_cfg)}
    if style != "ours":  # only then: replies saved before prompts.style existed still match
        settings["prompts"] = style
    settings["verify"].pop("chunk_size")  # how replies are grouped into files changes none of them
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for i, item in enumerate(items):
        digest.update("\x1f".join((item.key or str(i), item.question, item.answer, "\x1e")).encode())
    return digest.hexdigest()


def run_cascade(
    engine: Engine,
    items: Sequence[CascadeItem],
    verify_cfg: VerifyConfig,
    checkpoint: Path | None = None,
    style: str = "ours",
) -> list[CascadeResult]:
    """Judge every item through the cascade; one result per item, in order.

    With `checkpoint` (a folder), the judges' replies are saved every verify.chunk_size requests
    as they finish, and a later call with the same items and settings asks only for the rest.
    `style` is prompts.style.
    """
    saved = Checkpoint(checkpoint, verify_cfg.chunk_size, fingerprint(engine.model_cfg, items, verify_cfg, style))
    return judge(engine, items, verify_cfg, saved, style=style)


def judge(
    engine: Engine,
    items: Sequence[CascadeItem],
    verify_cfg: VerifyConfig,
    saved: Checkpoint,
    tracker: TaskProgress | None = None,
    style: str = "ours",
) -> list[CascadeResult]:
    """`run_cascade` with the caller's checkpoint (which tells how many replies it resumed)."""
    for stage in verify_cfg.stages:
        if stage not in VERIFY_STAGES:
            raise ValueError(f"verify.stages has '{stage}'; valid stages: {', '.join(VERIFY_STAGES)}.")
    votes_per_inference(verify_cfg.votes, verify_cfg.cycle_inferences)  # check before any sampling
    if saved.resumed:
        log.info(f"verify: resuming with {saved.resumed} judge replies from {saved.folder}")
    cascade = _Cascade(engine, items, verify_cfg, saved, style)
    cascade.tracker = tracker
    alive = list(range(len(cascade.items)))
    for stage in verify_cfg.stages:
        started = time.perf_counter()
        if alive:
            cascade.run_stage(stage, alive)
        before, alive = len(alive), cascade.settle(stage, alive)
        log.info(f"verify: {stage=} judged={before} passed={len(alive)} in {time.perf_counter() - started:.1f}s")
    return cascade.results


def verdict_table(candidates: pa.Table, results: dict[int, CascadeResult]) -> pa.Table:
    """VERDICT records: every candidate column, plus the judges' record (row -> result).

    skip_reason stays generate's, or becomes the reason a judge request of the row could not run.
    """
    out = {name: candidates.column(name).to_pylist() for name in CANDIDATE.names}
    extra = {name: [] for name in VERDICT.names if name not in out}
    for row in range(candidates.num_rows):
        result = results.get(row)
        if result is None:  # never judged: failed the static filter, or skipped at generate
            result = CascadeResult(status="skipped" if out["skip_reason"][row] else "filtered")
        elif result.skip_reason:
            out["skip_reason"][row] = result.skip_reason
        for stage in VERIFY_STAGES:
            extra[f"{stage}_votes"].append(result.votes[stage])
            extra[f"{stage}_cut_off"].append(result.cut_off[stage])
        extra["inferred_questions"].append(result.inferred_questions)
        extra["status"].append(result.status)
        extra["failed_stage"].append(result.failed_stage)
        extra["judge_prompt_tokens"].append(result.prompt_tokens)
        extra["judge_completion_tokens"].append(result.completion_tokens)
        extra["judge_samples"].append(result.samples)
        extra["judge_texts"].append(json.dumps(result.judge_texts, ensure_ascii=False) if result.judge_texts else None)
    return pa.Table.from_pydict({**out, **extra}, schema=VERDICT)
