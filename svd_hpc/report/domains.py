"""Per domain, side by side: what the seeds gave, what the merge kept, its share of the SFT set, and
pass@1 of the domain's benchmarks, base against trained. Shown when a run holds more than one domain."""

from __future__ import annotations

import json

from ..config import DOMAINS, RunConfig
from ..eval import scores as scoring
from ..eval.scores import EvalScores
from ..rundir.layout import RunDir
from .eval_tables import _ci, _pct
from .section import Section


def _merge_counts(run: RunDir) -> dict[str, dict]:
    """merge/stats.json's counts per domain ({} when missing or unreadable)."""
    try:
        per_domain = json.loads((run.stage_dir("merge") / "stats.json").read_text()).get("per_domain")
    except (OSError, ValueError, AttributeError):
        return {}
    return {d: c for d, c in per_domain.items() if isinstance(c, dict)} if isinstance(per_domain, dict) else {}


def domains_section(run: RunDir, cfg: RunConfig, scores: EvalScores | None) -> Section | None:
    """The per-domain table, or None for a single-domain run (the other tables already say it all)."""
    counts = _merge_counts(run)
    evaluated = {g[len("domain:") :] for _, g in scores.pass1 if g.startswith("domain:")} if scores else set()
    names = sorted(set(counts) | evaluated, key=lambda d: (DOMAINS.index(d) if d in DOMAINS else len(DOMAINS), d))
    if len(names) < 2:
        return None
    section = Section(
        "Per domain",
        ["domain", "seeds", "candidates", "valid %", "kept", "kept per seed", "weight", "% of SFT rows"]
        + ["base pass@1", "SVD pass@1", "pooled Δ SVD", "pooled Δ SVD 95% CI"]
        + ["Σ Δ SVD over benchmarks (the paper's domain figure)", "Σ Δ SVD 95% CI"],
    )
    total_kept = sum(c.get("kept", 0) for c in counts.values())
    for name in names:
        c = counts.get(name, {})
        seeds, candidates, kept = c.get("seeds"), c.get("candidates"), c.get("kept")
        group = f"domain:{name}"
        base = scores.pass1.get(("base", group)) if scores else None
        svd = scores.pass1.get(("SVD", group)) if scores else None
        summed = scores.summed.get(("SVD", group)) if scores else None
        section.rows.append(
            [
                name,
                f"{seeds:,}" if seeds is not None else "—",
                f"{candidates:,}" if candidates is not None else "—",
                f"{100 * c.get('valid', 0) / candidates:.1f}" if candidates else "—",
                f"{kept:,}" if kept is not None else "—",
                f"{kept / seeds:.2f}" if kept is not None and seeds else "—",
                f"{cfg.merge.domain_weights.get(name, 1.0):g}",
                f"{100 * kept / total_kept:.1f}" if kept is not None and total_kept else "—",
                _pct(base),
                _pct(svd),
                _pct(scoring.delta(base, svd) if base and svd else None, True),
                _ci(scores.deltas.get(("SVD", group)) if scores else None),
                f"{100 * summed.mean:+.1f}" if summed else "—",
                _ci(summed),
            ]
        )
    section.note = (
        "Seeds to kept rows from merge/stats.json (valid: passed every enabled judge stage; kept: after "
        "selection, dedup and merge.domain_weights); pass@1 and the pooled Δ pool each domain's benchmarks as in "
        "the pass@1 table; Σ Δ adds the domain's benchmarks' deltas, the figure the paper reports per domain."
    )
    return section
