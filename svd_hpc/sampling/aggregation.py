"""The vote aggregation rule: whether the judges' votes at one stage let a candidate pass.

One rule for both places that apply it: the verify cascade (verify.aggregation, one candidate's
votes as it is judged) and the merge thresholds (merge.aggregation, a shard's vote columns at once).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..records import VOTE_YES

RULES = ("unanimous", "majority", "k_of_v")


def passes(yes, total, rule: str, k: int | None = None, section: str = "verify") -> np.ndarray:
    """Per candidate, from its yes votes and its recorded votes: unanimous (all yes), majority (more
    than half yes) or k_of_v (at least k yes). No recorded vote, or total -1 (a stage never reached),
    fails; a vote without a verdict counts as no. `section` names the config key in errors."""
    yes, total = np.asarray(yes), np.asarray(total)
    if rule == "unanimous":
        ok = yes == total
    elif rule == "majority":
        ok = 2 * yes > total
    elif rule == "k_of_v":
        if k is None or k < 1:
            raise ValueError(f"{section}.k must be at least 1 when {section}.aggregation is k_of_v.")
        ok = yes >= k
    else:
        raise ValueError(f"unknown {section}.aggregation '{rule}'; choose {', '.join(RULES)}.")
    return (total > 0) & ok


def votes_pass(votes: Sequence[int], rule: str, k: int | None = None, section: str = "verify") -> bool:
    """`passes` for one candidate's list of votes."""
    return bool(passes(sum(1 for v in votes if v == VOTE_YES), len(votes), rule, k, section=section))
