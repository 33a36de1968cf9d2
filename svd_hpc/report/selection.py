"""The report's "Checkpoint selection" table: each selection checkpoint's score, the chosen one marked."""

from __future__ import annotations

from ..rundir.layout import RunDir, choice_path
from .section import Section


def selection_section(run: RunDir) -> Section | None:
    """None when the run did not select a checkpoint (train.select off, or select has not run yet)."""
    choice = run.load_json(choice_path(run))
    if not choice:
        return None
    names = choice["benchmarks"]
    section = Section(
        "Checkpoint selection",
        ["step", f"selection {choice['metric']} (%)", *[f"{name} (%)" for name in names], "chosen"],
        note=(
            f"Selection set: {', '.join(names)} (none of the reported benchmarks, by name or question). The "
            f"checkpoint with the highest mean {choice['metric']} over them is evaluated and published as the "
            f"trained model; ties go to the later step. Chosen: step {choice['step']} (`{choice['path']}`)."
        ),
    )
    for point in choice["curve"]:
        section.rows.append(
            [
                str(point["step"]),
                f"{100 * point['score']:.1f}",
                *[f"{100 * point['benchmarks'][name]:.1f}" for name in names],
                "◀ chosen" if point["step"] == choice["step"] else "",
            ]
        )
    return section
