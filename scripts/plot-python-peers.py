#!/usr/bin/env python3
"""Draws the Python peer benchmarks (`bench_arrays.py`, `bench_queue.py`,
`bench_dict.py`, each run with `--json FILE`) as one SVG: a panel per
workload, a bar per contender, on a log scale (higher is better).

Usage: python3 scripts/plot-python-peers.py out.svg arrays.json queue.json dict.json

Standard library only, so it runs wherever the benchmarks do.
"""

import json
import math
import sys
from xml.sax.saxutils import escape

LABEL_W, BAR_W, VALUE_W = 300, 300, 150
WIDTH = LABEL_W + BAR_W + VALUE_W
ROW_H, TITLE_H, PANEL_GAP, MARGIN = 18, 24, 16, 16


def panels_of(paths):
    for path in paths:
        with open(path) as source:
            yield from json.load(source)["panels"]


def draw(panels):
    parts = []
    y = MARGIN
    for panel in panels:
        rows = panel["rows"]
        top = max(row["value"] for row in rows)
        low = min(row["value"] for row in rows)
        # Log scale from a decade under the slowest to the fastest.
        floor = 10 ** math.floor(math.log10(low) - 1)
        span = math.log10(top) - math.log10(floor)
        parts.append(
            f'<text x="{MARGIN}" y="{y + 14}" font-weight="bold">'
            f'{escape(panel["title"])} ({escape(panel["unit"])}, log scale)</text>'
        )
        y += TITLE_H
        for row in rows:
            width = BAR_W * (math.log10(row["value"]) - math.log10(floor)) / span
            shmkit = row["label"].startswith("shmkit")
            color = "#d9822b" if shmkit else "#4a7fb0"
            parts.append(
                f'<text x="{MARGIN + LABEL_W - 6}" y="{y + 13}" text-anchor="end">'
                f'{escape(row["label"])}</text>'
                f'<rect x="{MARGIN + LABEL_W}" y="{y + 3}" width="{width:.1f}" '
                f'height="{ROW_H - 5}" fill="{color}"/>'
                f'<text x="{MARGIN + LABEL_W + width + 4:.1f}" y="{y + 13}">'
                f'{row["value"]:,.0f}{escape(row.get("note", ""))}</text>'
            )
            y += ROW_H
        y += PANEL_GAP
    height = y + MARGIN - PANEL_GAP
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH + 2 * MARGIN}" '
        f'height="{height}" font-family="sans-serif" font-size="12">'
        f'<rect width="100%" height="100%" fill="white"/>' + "".join(parts) + "</svg>\n"
    )


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    with open(sys.argv[1], "w") as out:
        out.write(draw(list(panels_of(sys.argv[2:]))))


if __name__ == "__main__":
    main()
