"""The peers comparison as a figure: ms per step against batch size, log-log, as SVG.

    python -m benchmarks.figure [results.json] [out.svg]

Reads the `peers` part of a results file (default benchmarks/results/latest.json, written by
`python -m benchmarks`) and writes docs/img/peers.svg: one line per library that ran at
several batch sizes (PyTorch, opgraph batched), and a marked point for a library timed at
one size (micrograd, opgraph eager). Plain SVG written by hand: no plotting library needed.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from xml.sax.saxutils import escape

RESULTS = Path(__file__).parent / "results" / "latest.json"
FIGURE = Path(__file__).parent.parent / "docs" / "img" / "peers.svg"

WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 70, 150, 40, 50  # margins around the plot area
SERIES = {  # name in the results -> label, colour
    "pytorch": ("PyTorch tensors", "#d1495b"),
    "opgraph": ("batched, stored params", "#00798c"),
    "plain": ("batched, plain params", "#7fbcc5"),
    "eager": ("opgraph eager", "#edae49"),
    "micrograd": ("micrograd", "#66a182"),
}


def series(peers: dict) -> dict[str, list[tuple[int, float]]]:
    """Each library's (points, ms per step), by increasing points."""
    found: dict[str, list[tuple[int, float]]] = {name: [] for name in SERIES}
    for points, row in peers.items():
        if not isinstance(row, dict):
            continue  # the notes: torch's version, the equality check
        for name in SERIES:
            if name in row:
                found[name].append((int(points), float(row[name])))
    return {name: sorted(rows) for name, rows in found.items() if rows}


def _decades(low: float, high: float) -> list[float]:
    """Powers of ten from below low to above high: the axis' ticks."""
    return [10.0**k for k in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)]


def _number(x: float) -> str:
    return f"{x:,.0f}" if x >= 1 else f"{x:g}"


def svg(peers: dict, title: str = "The moons step, ms per step (CPU time, log-log)") -> str:
    """The figure's SVG text for the `peers` results."""
    lines = series(peers)
    if not lines:
        raise ValueError("no peers results to draw: run `python -m benchmarks` first")
    xs = [p for rows in lines.values() for p, _ in rows]
    ys = [ms for rows in lines.values() for _, ms in rows]
    x_ticks, y_ticks = _decades(min(xs), max(xs)), _decades(min(ys), max(ys))
    x0, x1 = math.log10(x_ticks[0]), math.log10(x_ticks[-1])
    y0, y1 = math.log10(y_ticks[0]), math.log10(y_ticks[-1])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def at(points: float, ms: float) -> tuple[float, float]:
        x = LEFT + plot_w * (math.log10(points) - x0) / max(x1 - x0, 1e-9)
        y = TOP + plot_h * (1 - (math.log10(ms) - y0) / max(y1 - y0, 1e-9))
        return round(x, 1), round(y, 1)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="22" font-size="14">{escape(title)}</text>',
    ]
    for tick in x_ticks:
        x, _ = at(tick, y_ticks[0])
        out.append(f'<line x1="{x}" y1="{TOP}" x2="{x}" y2="{TOP + plot_h}" stroke="#ddd"/>')
        out.append(
            f'<text x="{x}" y="{TOP + plot_h + 18}" text-anchor="middle">{_number(tick)}</text>'
        )
    for tick in y_ticks:
        _, y = at(x_ticks[0], tick)
        out.append(f'<line x1="{LEFT}" y1="{y}" x2="{LEFT + plot_w}" y2="{y}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4}" text-anchor="end">{_number(tick)}</text>')
    out.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 10}" text-anchor="middle">points in the '
        f"batch</text>"
    )
    out.append(
        f'<text transform="translate(16 {TOP + plot_h / 2}) rotate(-90)" text-anchor="middle">'
        f"ms per step</text>"
    )
    for k, (name, rows) in enumerate(lines.items()):
        label, colour = SERIES[name]
        points = [at(p, ms) for p, ms in rows]
        out.append(f'<g class="series" data-name="{name}">')
        if len(points) > 1:
            path = " ".join(f"{x},{y}" for x, y in points)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
        for (x, y), (_, ms) in zip(points, rows, strict=True):
            tip = f"<title>{ms:.3g} ms</title>"
            out.append(f'<circle cx="{x}" cy="{y}" r="4" fill="{colour}">{tip}</circle>')
        legend_y = TOP + 10 + 20 * k
        out.append(
            f'<rect x="{WIDTH - RIGHT + 12}" y="{legend_y - 9}" width="12" height="12" '
            f'fill="{colour}"/><text x="{WIDTH - RIGHT + 30}" y="{legend_y + 1}">'
            f"{escape(label)}</text>"
        )
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    results = Path(args[0]) if args else RESULTS
    figure = Path(args[1]) if len(args) > 1 else FIGURE
    peers = json.loads(results.read_text()).get("peers")
    if not peers:
        print(f"{results}: no peers results (run `python -m benchmarks` first)", file=sys.stderr)
        return 1
    figure.write_text(svg(peers))
    print(f"wrote {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
