"""How the CLI prints rows for people: aligned columns under upper-case headers."""

from __future__ import annotations

from collections.abc import Sequence


def print_table(columns: Sequence[str], cells: list[list[str]]) -> None:
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
