#!/usr/bin/env python3
"""Draws `shmkit bench --json` output as an SVG: ns/op per allocator, one
panel per workload (rows) and worker setup (columns), on a log scale.

Usage: shmkit bench --peers --json > bench.json
       python3 scripts/plot-bench.py bench.json docs/bench.svg

Standard library only, so it runs wherever the benchmark does.
"""

import json
import math
import sys
from xml.sax.saxutils import escape

WORKLOADS = ["pair64", "churn", "bulk"]
MODES = [("1t", "1 thread"), ("2t", "2 threads"), ("2p", "2 processes")]

LABEL_W, BAR_W, VALUE_W = 150, 220, 62
PANEL_W = LABEL_W + BAR_W + VALUE_W
ROW_H, PANEL_TOP, PANEL_GAP = 15, 34, 18
MARGIN = 16


def color_of(allocator):
    if allocator.startswith("shmkit-"):
        return "#d9822b"
    if allocator.startswith("boost-"):
        return "#7b5ea7"
    if allocator == "system":
        return "#333333"
    return "#4a7fb0"  # peers in the same binary


def group_of(allocator):
    """Peers first (the reference on top), then shmkit."""
    if allocator == "system":
        return 0
    if allocator.startswith("boost-"):
        return 2
    if allocator.startswith("shmkit-"):
        return 3
    return 1


def allocators_in_order(report):
    """Allocators grouped, each group in the order the run measured them."""
    seen = list(report.get("allocators", []))
    for row in report["rows"]:
        if row["allocator"] not in seen:
            seen.append(row["allocator"])
    return sorted(seen, key=group_of)


def log_x(ns, low, high):
    return BAR_W * (math.log10(ns) - math.log10(low)) / (math.log10(high) - math.log10(low))


def fmt_ns(ns):
    if ns < 10:
        return f"{ns:.2f}"
    if ns < 100:
        return f"{ns:.1f}"
    return f"{ns:.0f}"


def panel(out, x0, y0, workload, mode, mode_label, allocators, cells, low, high):
    out.append(
        f'<text x="{x0}" y="{y0 + 14}" class="title">{workload} · {mode_label}</text>'
    )
    top = y0 + PANEL_TOP
    height = ROW_H * len(allocators)
    bars_x = x0 + LABEL_W
    decade = 10 ** math.floor(math.log10(low))
    while decade <= high:
        if decade >= low:
            gx = bars_x + log_x(decade, low, high)
            out.append(
                f'<line x1="{gx:.1f}" y1="{top - 4}" x2="{gx:.1f}" y2="{top + height}" class="grid"/>'
            )
            out.append(
                f'<text x="{gx:.1f}" y="{top - 7}" class="axis">{decade:g}</text>'
            )
        decade *= 10
    for i, allocator in enumerate(allocators):
        y = top + i * ROW_H
        out.append(
            f'<text x="{bars_x - 6}" y="{y + 11}" class="label">{escape(allocator)}</text>'
        )
        row = cells.get((allocator, workload, mode))
        if row is None:
            out.append(f'<text x="{bars_x + 4}" y="{y + 11}" class="missing">n/a</text>')
            continue
        if "error" in row:
            out.append(
                f'<text x="{bars_x + 4}" y="{y + 11}" class="missing">'
                f"{escape(row['error'][:40])}</text>"
            )
            continue
        ns = row["ns_per_op"]
        width = max(log_x(max(ns, low), low, high), 1.0)
        out.append(
            f'<rect x="{bars_x}" y="{y + 2}" width="{width:.1f}" height="{ROW_H - 4}" '
            f'fill="{color_of(allocator)}"><title>{escape(allocator)}: {fmt_ns(ns)} ns/op</title></rect>'
        )
        out.append(
            f'<text x="{bars_x + width + 4:.1f}" y="{y + 11}" class="value">{fmt_ns(ns)}</text>'
        )


def plot(report):
    rows = report["rows"]
    allocators = allocators_in_order(report)
    cells = {(r["allocator"], r["workload"], r["mode"]): r for r in rows}
    measured = [r["ns_per_op"] for r in rows if "ns_per_op" in r]
    low = 10 ** math.floor(math.log10(min(measured)))
    high = 10 ** math.ceil(math.log10(max(measured)))
    panel_h = PANEL_TOP + ROW_H * len(allocators) + PANEL_GAP
    header = 52
    width = MARGIN * 2 + PANEL_W * len(MODES)
    height = header + panel_h * len(WORKLOADS) + 24
    machine = report.get("machine", {})
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
        "<style>"
        ".title{font-size:13px;font-weight:bold}"
        ".label{font-size:11px;text-anchor:end}"
        ".value{font-size:10px;fill:#222}"
        ".missing{font-size:10px;fill:#999;font-style:italic}"
        ".axis{font-size:9px;fill:#777;text-anchor:middle}"
        ".grid{stroke:#ddd;stroke-width:1}"
        ".heading{font-size:15px;font-weight:bold}"
        ".sub{font-size:11px;fill:#555}"
        "</style>",
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{MARGIN}" y="22" class="heading">shmkit bench: ns per operation '
        f"(log scale, lower is better)</text>",
        f'<text x="{MARGIN}" y="40" class="sub">{escape(report.get("date", ""))} · '
        f'{escape(str(machine.get("cpu", "")))} · {machine.get("cores", "?")} cores · '
        "orange: shmkit, blue: peers in the same binary, purple: Boost.Interprocess, "
        "black: system allocator</text>",
    ]
    for wi, workload in enumerate(WORKLOADS):
        for mi, (mode, mode_label) in enumerate(MODES):
            panel(
                out,
                MARGIN + mi * PANEL_W,
                header + wi * panel_h,
                workload,
                mode,
                mode_label,
                allocators,
                cells,
                low,
                high,
            )
    out.append(
        f'<text x="{MARGIN}" y="{height - 8}" class="sub">One operation: an allocation '
        "and its free. With two workers: wall time over both workers' operations.</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    with open(argv[1], encoding="utf-8") as source:
        report = json.load(source)
    if not any("ns_per_op" in row for row in report.get("rows", [])):
        sys.stderr.write("plot-bench: no measured rows in the input\n")
        return 1
    with open(argv[2], "w", encoding="utf-8") as target:
        target.write(plot(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
