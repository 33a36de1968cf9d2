"""The cards a run publishes with its SFT set and its model: what they are, where they came from, how they did.

A card is a README.md with YAML metadata (the hub reads `configs`, `base_model`, `datasets`, `tags`
from it). Both record the method's settings (model, seeds, generate, verify, merge, train), never
the cluster profile or resources: account and partition names are the site's business, not the
dataset's.
"""

from __future__ import annotations

import json

import yaml

from .. import config as config_mod
from ..inputs import models
from ..report.stages import funnel_section
from ..rundir.layout import RunDir, choice_path

METHOD_SECTIONS = ("model", "seeds", "generate", "verify", "merge", "train")
TAGS = ["svd_hpc", "self-verified-distillation"]


def _front_matter(meta: dict) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def method_config(cfg: config_mod.RunConfig, sections=METHOD_SECTIONS) -> str:
    data = config_mod.to_dict(cfg)
    return yaml.safe_dump({name: data[name] for name in sections}, sort_keys=False, allow_unicode=True)


def provenance(run: RunDir) -> str:
    """The svd_hpc version and git commit the run was launched with (config.yaml's `svd_hpc` entry)."""
    meta = (yaml.safe_load(run.config_path.read_text()) or {}).get("svd_hpc") or {}
    return f"svd_hpc {meta.get('version', '?')}, commit {meta.get('git_commit') or 'unknown'}"


def seed_source(cfg: config_mod.RunConfig) -> list[str]:
    lines = []
    for s in cfg.seeds.source_list():
        where = f"`{s.path}`" + (f" (config `{s.hf_config}`)" if s.hf_config else "")
        revision = f", revision `{s.revision}`" if s.revision else ""
        domain = f"domain field `{s.domain_field}`" if s.domain_field else f"domain {s.domain}"
        lines.append(f"- source: {where}, split `{s.split}`{revision}, question field `{s.question_field}`, {domain}")
    limit = cfg.seeds.limit
    lines.append(f"- limit: {limit if limit is not None else 'all questions'}; {cfg.seeds.shards} shard(s)")
    return lines


def dataset_card(run: RunDir, cfg: config_mod.RunConfig, splits: list[str]) -> str:
    """README.md of the SFT set: the HF-datasets layout, the seed source, the funnel and the config."""
    meta = {
        "pretty_name": f"SVD self-curated SFT set ({cfg.name})",
        "tags": TAGS + ["synthetic"],
        "task_categories": ["text-generation"],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": f"data/{split}.parquet"} for split in splits],
            }
        ],
    }
    v = cfg.verify
    lines = [
        _front_matter(meta),
        f"# SVD SFT set: {cfg.name}",
        "",
        f"Answers that `{cfg.model.path}`"
        + (f" (revision `{cfg.model.revision}`)" if cfg.model.revision else "")
        + f" wrote to unlabeled seed questions ({cfg.generate.n} per question) and then judged itself "
        f"through the cascade {', '.join(v.stages)} ({v.votes} votes per stage); merge kept candidates by "
        f"`{cfg.merge.aggregation}` votes and `{cfg.merge.selection}` selection. Built by {provenance(run)}.",
        "",
        "Rows: `messages` (user prompt, assistant answer), `question_id`, `candidate_index`, `domain`, "
        "`votes_yes`, `votes_total`.",
        "",
        "## Seed questions",
        "",
        *seed_source(cfg),
        "",
        funnel_section(run).markdown(),
        "## Config",
        "",
        "```yaml",
        method_config(cfg, ("model", "seeds", "generate", "verify", "merge")).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _pct(entry: dict | None) -> str:
    if not entry:
        return "—"
    err = entry.get("stderr")
    return f"{100 * entry['pass_at_1']:.1f}" + (f" ± {100 * err:.1f}" if err else "")


def eval_table(summary: dict | None) -> list[str]:
    """pass@1 (%) per benchmark of base, trained and UQ-TTC, from eval/summary.json."""
    if not summary:
        return ["Evaluation pending: the run's report job adds the table once the trained model is evaluated.", ""]
    lines = [
        "| benchmark | questions | base | SVD (this model) | Δ SVD (95% CI) | UQ-TTC |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for group in sorted(summary, key=lambda g: (g.startswith("domain:"), g)):
        row = summary[group]
        delta = (row.get("delta") or {}).get("SVD")
        change = "—"
        if delta:
            change = f"{100 * delta['mean']:+.1f} ({100 * delta['ci95'][0]:+.1f}, {100 * delta['ci95'][1]:+.1f})"
        lines.append(
            f"| {group} | {row.get('questions', '')} | {_pct(row.get('base'))} | {_pct(row.get('SVD'))} | "
            f"{change} | {_pct(row.get('UQ-TTC'))} |"
        )
    lines += ["", "pass@1 as the mean over eval seeds ± its standard error; Δ against the base model.", ""]
    # a domain row's Δ pools its questions; the paper reports a domain as the sum of its benchmarks' Δ
    for group in sorted(g for g in summary if g.startswith("domain:")):
        summed = (summary[group].get("delta_sum_over_benchmarks") or {}).get("SVD")
        if summed:
            lines.append(
                f"- {group}: the Δ SVD above is pooled over its questions; "
                f"{summed.get('aggregate', 'Σ Δ over benchmarks')}: {100 * summed['mean']:+.1f} "
                f"({100 * summed['ci95'][0]:+.1f}, {100 * summed['ci95'][1]:+.1f})"
            )
    if lines[-1] != "":
        lines.append("")
    return lines


def model_card(run: RunDir, cfg: config_mod.RunConfig) -> str:
    """README.md of the trained model: base, data, training, and the eval table once the report job has it."""
    base = cfg.train.model or cfg.model.path
    meta: dict = {"library_name": "transformers", "pipeline_tag": "text-generation", "tags": list(TAGS)}
    if models.is_hub_id(base):
        meta["base_model"] = base
    if cfg.hub.dataset:
        meta["datasets"] = [cfg.hub.dataset]
    summary = run.load_json(run.stage_dir("train") / "summary.json", default={}) or {}
    eval_summary = summary_of(run)
    data = "its own SFT set"
    if cfg.hub.dataset:
        data = f"the SFT set [{cfg.hub.dataset}](https://huggingface.co/datasets/{cfg.hub.dataset})"
    t = cfg.train
    lines = [
        _front_matter(meta),
        f"# SVD: {cfg.name}",
        "",
        f"`{base}` fine-tuned on {data}: answers the model wrote and verified itself (self-verified "
        f"distillation). Built by {provenance(run)}.",
        "",
        "## Training",
        "",
        f"- {t.steps} steps, global batch {t.global_batch} packed sequences of up to {t.max_seq_len} tokens, "
        f"peak lr {t.lr}, FSDP2 over {summary.get('world_size', '?')} processes",
        f"- loss on the first batch after training: {summary['reference_loss']:.4f}"
        if isinstance(summary.get("reference_loss"), (int, float))
        else "- loss on the first batch after training: not recorded",
        *selection_lines(run),
        "",
        "## Evaluation",
        "",
        *eval_table(eval_summary),
        "## Config",
        "",
        "```yaml",
        method_config(cfg).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def selection_lines(run: RunDir) -> list[str]:
    """The card's line on train.select: which checkpoint this is, and what chose it (none without selection)."""
    choice = run.load_json(choice_path(run))
    if not choice:
        return []
    score = next(p["score"] for p in choice["curve"] if p["step"] == choice["step"])
    steps = ", ".join(str(p["step"]) for p in choice["curve"])
    return [
        f"- this is the checkpoint of step {choice['step']}, chosen among steps {steps} by the highest mean "
        f"{choice['metric']} on {', '.join(choice['benchmarks'])} ({100 * score:.1f}%), none of them an eval "
        "benchmark below; the loss above is the final step's"
    ]


def summary_of(run: RunDir) -> dict | None:
    """eval/summary.json (the report's scores), or None before the report exists."""
    path = run.stage_dir("eval") / "summary.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
