"""The paper's protocol as the qwen3 configs' default (docs/PROTOCOL.md), and the SFT schedule."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from svd_hpc import config
from svd_hpc.stages import train

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("qwen3-*.yaml"))
SEEDS = {  # marin experiments/self_instill/ (instruction_seed = the user turn, answers dropped)
    "math": "marin-community/open-thoughts-4-30k-math-qwen3-32b-annotated-32768-tokens",
    "science": "marin-community/open-thoughts-4-30k-science-qwen3-32b-annotated-32768-tokens",
    "code": "marin-community/open-thoughts-4-30k-code-qwen3-32b-annotated",
}
# the authors' seed scale per size (docs/PROTOCOL.md "seeds"): 0.6B math from OpenThoughts3's math rows,
# 8B math from the full OpenThoughts4 math set; the rest read the 30k sets
SEED_SCALE = {
    "qwen3-0.6b-math": ("open-thoughts/OpenThoughts3-1.2M", "conversations.0.value"),
    "qwen3-8b-math": ("marin-community/open-thoughts-4-math-qwen3-32b-annotated", "instruction_seed"),
}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_qwen3_configs_run_the_authors_protocol(path):
    cfg = config.load(path)
    v, t, s = cfg.verify, cfg.train, cfg.seeds
    assert (v.max_tokens, v.votes, v.temperature, v.top_p, v.aggregation) == (32768, 5, 0.6, 0.95, "unanimous")
    assert (v.verdict_rule, v.inferred_question, v.cycle_inferences, v.verdict_prefix) == (
        "authors",
        "first_line",
        1,
        "",
    )
    assert (t.decay_ratio, t.decay_embeddings, t.min_lr_ratio, t.betas) == (0.9, False, 0.1, [0.9, 0.999])
    assert cfg.prompts.style == "authors"  # their judge and math generation texts, verbatim
    domain = path.stem.split("-")[-1]
    sources = s.sources or [s]  # the mixed config reads one source per domain
    assert [(src.path, src.question_field) for src in sources] == [
        SEED_SCALE.get(path.stem, (SEEDS[src.domain], "instruction_seed")) for src in sources
    ]
    assert [src.domain for src in sources] == (["math", "science", "code"] if domain == "mixed" else [domain])


def test_demo_keeps_its_own_judge_and_schedule():
    cfg = config.load(Path(__file__).parent.parent / "configs" / "demo.yaml")
    assert (cfg.verify.verdict_rule, cfg.verify.inferred_question, cfg.verify.max_tokens) == ("strict", "full", 40)
    assert cfg.prompts.style == "ours"  # its verdict prefix "[[" answers our judges' closing reminder
    assert (cfg.train.decay_ratio, cfg.train.decay_embeddings) == (None, True)


def test_levanter_schedule_holds_the_peak_before_the_cosine():
    # marin SFT scripts: warmup=0.05, decay=0.9 of 2000 steps -> 100 up, 100 held, 1800 down to 0.1
    factors = [train.lr_factor(s, steps=2000, warmup=100, min_ratio=0.1, decay=1800) for s in range(2000)]
    assert factors[0] == pytest.approx(0.01) and factors[99] == pytest.approx(1.0)
    assert factors[100:201] == [1.0] * 101  # held, and the cosine starts from the peak at step 200
    assert factors[201] < 1.0 and all(a >= b for a, b in zip(factors[200:], factors[201:]))
    assert factors[1100] == pytest.approx(0.55, abs=1e-3)  # half way down the cosine
    assert factors[-1] == pytest.approx(0.1, abs=1e-5)
    # decay=None: the cosine starts right after warmup (the earlier schedule, a knob now)
    assert train.lr_factor(150, steps=2000, warmup=100, min_ratio=0.1) < 1.0


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.proj = torch.nn.Linear(4, 4)
        self.norm = torch.nn.LayerNorm(4)


@pytest.mark.parametrize("decay_embeddings", [False, True])
def test_embeddings_are_not_decayed_unless_asked(decay_embeddings):
    model = Tiny()
    t = argparse.Namespace(
        weight_decay=0.01,
        lr=1e-5,
        betas=[0.9, 0.999],
        warmup_ratio=0.05,
        steps=100,
        min_lr_ratio=0.1,
        decay_ratio=0.9,
        decay_embeddings=decay_embeddings,
    )
    optimizer, _ = train.build_optimizer(model, t)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.proj.weight) in decayed
    assert id(model.norm.weight) not in decayed and id(model.proj.bias) not in decayed
    assert (id(model.embed.weight) in decayed) == decay_embeddings


def test_decay_ratio_beyond_what_warmup_leaves_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {warmup_ratio: 0.2, decay_ratio: 0.9}\n")
    with pytest.raises(config.ConfigError, match="train.decay_ratio must be in"):
        config.load(path)


def test_uq_ttc_judges_every_candidate_against_the_raw_question(monkeypatch):
    from svd_hpc.eval.benchmarks import Problem
    from svd_hpc.sampling.engine import Completion
    from svd_hpc.stages import evaluate

    seen = []
    monkeypatch.setattr(
        evaluate, "run_cascade", lambda engine, items, cfg, checkpoint=None, style="ours": seen.extend(items) or []
    )
    engine = argparse.Namespace(thinking=True)
    cfg = config.RunConfig()
    problem = Problem("q1", "Which gas?", "science", "choice", options=["N2", "O2"])
    task = argparse.Namespace(benchmark="b", seed=0)
    outputs = [[Completion("<think>x</think>Answer: A", 5, "stop", 3), Completion("no think block", 5, "stop", 3)]]
    evaluate.uq_ttc_choose(engine, cfg, task, [problem], ["Which gas?\n\nA) N2\nB) O2"], outputs, None)
    assert [(i.question, i.answer) for i in seen] == [("Which gas?", "Answer: A"), ("Which gas?", "no think block")]
    seen.clear()
    cfg.eval.uq_ttc_filter, cfg.eval.uq_ttc_judge_question = True, "presented"  # ours, as knobs
    evaluate.uq_ttc_choose(engine, cfg, task, [problem], ["Which gas?\n\nA) N2\nB) O2"], outputs, None)
    assert [(i.question, i.answer) for i in seen] == [("Which gas?\n\nA) N2\nB) O2", "Answer: A")]


# Qwen3's generation_config.json (Qwen/Qwen3-4B and -8B ship these sampling keys)
QWEN3_GENERATION_CONFIG = {"do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_qwen3_configs_hand_vllm_the_authors_sampling_and_no_top_k(path, tmp_path):
    """The SamplingParams each stage hands vLLM, with the defaults vLLM's ModelConfig reads from a model
    that ships Qwen3's generation_config.json: the authors set temperature and top_p only."""
    import json
    import shutil

    from vllm.config import ModelConfig

    from svd_hpc.inputs import models
    from svd_hpc.sampling.cascade import judge_sampling
    from svd_hpc.sampling.engine import Engine, model_sampling_defaults
    from svd_hpc.stages.evaluate import eval_sampling
    from svd_hpc.stages.generate import generate_sampling

    model = tmp_path / "qwen3"
    shutil.copytree(models.resolve("builtin:tiny-qwen3"), model)
    (model / "generation_config.json").write_text(json.dumps(QWEN3_GENERATION_CONFIG))
    cfg = config.load(path, [f"run_root={tmp_path}"])
    engine = Engine.__new__(Engine)  # what Engine.__init__ keeps for sampling, without loading the weights
    engine.model_cfg = cfg.model
    # the engine's vllm.LLM gets model.generation_config as is (Engine.engine_args)
    args = {"model": str(model), "max_model_len": 1024}
    engine.sampling_defaults = model_sampling_defaults(
        ModelConfig(**args, generation_config=cfg.model.generation_config)
    )

    stages = {
        "generate": generate_sampling(cfg),
        "judges": judge_sampling(cfg.verify),
        "eval": eval_sampling(cfg, 1),
        "uq_ttc candidates": eval_sampling(cfg, cfg.eval.uq_ttc_candidates),
    }
    for stage, sampling in stages.items():
        params = engine.sampling_params(sampling, seed=1)
        assert params.top_k in (0, -1), f"{stage}: top_k {params.top_k} (the authors never set it)"
        assert params.min_p == 0.0 and params.repetition_penalty == 1.0, stage
    assert (stages["generate"].temperature, stages["generate"].top_p) == (0.8, 0.95)
    assert (stages["judges"].temperature, stages["judges"].top_p) == (0.6, 0.95)
    assert (stages["eval"].temperature, stages["eval"].top_p) == (0.7, 1.0)
    # the guard is real: "auto" takes Qwen3's top_k 20 from the same model
    auto = model_sampling_defaults(ModelConfig(**args, generation_config="auto"))
    assert auto["top_k"] == 20
