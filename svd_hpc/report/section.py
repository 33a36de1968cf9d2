"""One table of the report, rendered to markdown (report.md) and to the terminal alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table as RichTable


@dataclass
class Section:
    """One table of the report, rendered to markdown and to the terminal alike."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""

    def markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        if not self.rows:
            return "\n".join(lines + [self.note or "Nothing recorded yet.", ""])
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append("| " + " | ".join(["---"] + ["---:"] * (len(self.headers) - 1)) + " |")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines + ([""] + [self.note] if self.note else []) + [""])

    def rich(self) -> RichTable:
        # imported here: the merge and train tasks write the funnel into a dataset card as markdown,
        # and need no terminal library for it
        from rich.table import Table as RichTable

        table = RichTable(title=self.title, caption=self.note or None)
        for i, header in enumerate(self.headers):
            table.add_column(header, justify="left" if i == 0 else "right")
        for row in self.rows:
            table.add_row(*row)
        return table
