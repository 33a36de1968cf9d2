"""The pass/fail gate of a benchmark's `--quick` run (CI runs every benchmark that way, .ci/run).

A quick run is a reduced size of the full benchmark; its bounds sit between the README figure
(from a full run) and the benchmark's target, so a shared 2-core machine's noise passes and a
real regression does not. A failed bound exits non-zero with one line naming the benchmark, the
quantity, its value and the bound.
"""

from __future__ import annotations

import sys
from pathlib import Path


def gate(checks: list[tuple[str, float, str, float]]) -> None:
    """Each check is (quantity, value, "<=" or ">=", bound); prints each, exits 1 on the first failure."""
    script = Path(sys.argv[0]).name
    failed = []
    for quantity, value, op, bound in checks:
        ok = value <= bound if op == "<=" else value >= bound
        print(f"quick bound: {quantity} {value:.3g} {op} {bound:.3g}: {'ok' if ok else 'FAILED'}")
        if not ok:
            failed.append(f"{quantity} {value:.3g}, bound {op} {bound:.3g}")
    if failed:
        sys.exit(f"{script} --quick failed: {'; '.join(failed)}")
