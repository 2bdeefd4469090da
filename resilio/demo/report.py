"""The HTML page of `resilio demo`: the figures side by side and an inline SVG timeline.

One self-contained file (no script, no external asset): the timeline shows,
per second of the run, the share of calls that succeeded (by the second they
were made) for both clients, the calls that reached each upstream, the
scripted phases, and the resilient client's circuit breaker state.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from resilio.demo.run import DemoOptions, RunResult, targets
from resilio.demo.upstream import TIMELINE

__all__ = ["render", "timeline_svg"]

_W, _LEFT, _RIGHT = 960, 56, 16
_PLOT_W = _W - _LEFT - _RIGHT
_PHASE_COLOURS = {
    "steady": "#ffffff",
    "recovery": "#ffffff",
    "hangs": "#efe7fb",
    "latency": "#fdf2dc",
    "outage": "#fbdcdc",
    "restart": "#fde8d7",
    "overload": "#e3eefb",
}
_BARE, _RESILIENT = "#c0392b", "#1f6fb2"
_STATE_COLOURS = {"closed": "#3c9d5d", "open": "#c0392b", "half-open": "#e0a526"}


def _per_second(result: RunResult, seconds: int) -> list[float | None]:
    """Success rate of the calls made in each second (None: no call made then)."""
    made = [0] * seconds
    ok = [0] * seconds
    for c in result.calls:
        s = int(c.start)
        if 0 <= s < seconds:
            made[s] += 1
            ok[s] += c.ok
    return [None if m == 0 else k / m for m, k in zip(made, ok, strict=True)]


def _states(result: RunResult, end: float) -> list[tuple[float, float, str]]:
    """(from, to, state) of the breaker over [0, end]: closed until the first transition."""
    spans: list[tuple[float, float, str]] = []
    at, state = 0.0, "closed"
    for t, new in result.transitions:
        t = min(max(t, 0.0), end)
        if t > at:
            spans.append((at, t, state))
        at, state = t, new
    if end > at:
        spans.append((at, end, state))
    return spans


def _line(points: list[tuple[float, float]], colour: str, dash: str = "") -> str:
    if not points:
        return ""
    d = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    extra = f' stroke-dasharray="{dash}"' if dash else ""
    return (
        f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="2"'
        f' stroke-linejoin="round"{extra}/>'
    )


def timeline_svg(bare: RunResult, resilient: RunResult) -> str:
    """The timeline as an inline SVG element."""
    duration = bare.duration
    seconds = max(1, math.ceil(duration))
    sx = _PLOT_W / seconds

    def x(t: float) -> float:
        return _LEFT + t * sx

    top1, h1 = 34, 170  # success rate
    top2, h2 = top1 + h1 + 34, 110  # upstream calls per second
    top3 = top2 + h2 + 30  # breaker strips
    strip = 16
    height = top3 + 2 * (strip + 8) + 30
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {height}" '
        f'width="{_W}" height="{height}" font-family="sans-serif" font-size="11" '
        'role="img" aria-label="success rate, upstream load and breaker state over time">'
    ]
    # Phase bands behind both charts, with their names on top.
    for p in TIMELINE:
        x0, x1 = x(p.start * duration), x(p.end * duration)
        colour = _PHASE_COLOURS.get(p.name, "#ffffff")
        out.append(
            f'<rect x="{x0:.1f}" y="{top1}" width="{x1 - x0:.1f}" '
            f'height="{top2 + h2 - top1}" fill="{colour}"><title>{html.escape(p.label)}'
            "</title></rect>"
        )
        out.append(
            f'<text x="{(x0 + x1) / 2:.1f}" y="{top1 - 6}" text-anchor="middle" '
            f'fill="#555">{html.escape(p.name)}</text>'
        )
    # Chart 1: success rate by the second calls were made.
    for frac in (0.0, 0.5, 1.0):
        y = top1 + h1 * (1 - frac)
        out.append(
            f'<line x1="{_LEFT}" x2="{_LEFT + _PLOT_W}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#ccc" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{100 * frac:.0f} %</text>'
        )
    for result, colour in ((bare, _BARE), (resilient, _RESILIENT)):
        pts = [
            (x(s + 0.5), top1 + h1 * (1 - r))
            for s, r in enumerate(_per_second(result, seconds))
            if r is not None
        ]
        out.append(_line(pts, colour))
    out.append(
        f'<text x="{_LEFT}" y="{top1 + h1 + 14}" fill="#333">success rate of the calls made '
        "in each second</text>"
    )
    # Chart 2: calls that reached each upstream, per second.
    peak = max([1, *bare.upstream_per_second, *resilient.upstream_per_second])
    for frac in (0.0, 1.0):
        y = top2 + h2 * (1 - frac)
        out.append(
            f'<line x1="{_LEFT}" x2="{_LEFT + _PLOT_W}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#ccc" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{frac * peak:.0f}</text>'
        )
    for result, colour in ((bare, _BARE), (resilient, _RESILIENT)):
        pts = [
            (x(s + 0.5), top2 + h2 * (1 - n / peak))
            for s, n in enumerate(result.upstream_per_second[:seconds])
        ]
        out.append(_line(pts, colour, "5,3"))
    out.append(
        f'<text x="{_LEFT}" y="{top2 + h2 + 14}" fill="#333">calls that reached the upstream, '
        "per second</text>"
    )
    # Breaker strips: the bare client has none.
    for i, (result, label) in enumerate(((bare, "bare"), (resilient, "resilient"))):
        y = top3 + i * (strip + 8)
        out.append(f'<text x="{_LEFT - 6}" y="{y + 12}" text-anchor="end">{label}</text>')
        if result.total_timeout is None and not result.transitions:
            out.append(
                f'<rect x="{_LEFT}" y="{y}" width="{_PLOT_W}" height="{strip}" fill="#eee"/>'
                f'<text x="{_LEFT + 6}" y="{y + 12}" fill="#777">no circuit breaker</text>'
            )
            continue
        for a, b, state in _states(result, duration):
            out.append(
                f'<rect x="{x(a):.1f}" y="{y}" width="{max(0.5, x(b) - x(a)):.1f}" '
                f'height="{strip}" fill="{_STATE_COLOURS.get(state, "#999")}">'
                f"<title>{html.escape(state)} {a:.2f}-{b:.2f} s</title></rect>"
            )
    # Time axis and legend.
    axis_y = top3 + 2 * (strip + 8) + 4
    step = max(1, round(seconds / 10))
    for s in range(0, seconds + 1, step):
        out.append(f'<text x="{x(s):.1f}" y="{axis_y + 10}" text-anchor="middle">{s}s</text>')
    legend = [
        (_BARE, "bare httpx"),
        (_RESILIENT, "resilient"),
        (_STATE_COLOURS["closed"], "breaker closed"),
        (_STATE_COLOURS["open"], "open"),
        (_STATE_COLOURS["half-open"], "half-open"),
    ]
    lx = _LEFT
    for colour, text in legend:
        out.append(f'<rect x="{lx}" y="6" width="12" height="8" fill="{colour}"/>')
        out.append(f'<text x="{lx + 16}" y="14">{html.escape(text)}</text>')
        lx += 24 + 7 * len(text)
    out.append("</svg>")
    return "\n".join(out)


def _pct(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:.1f} %"


def _ms(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{1000 * v:.0f} ms"


def _table(rows: Sequence[tuple[str, ...]], head: tuple[str, ...]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def render(
    options: DemoOptions,
    bare: RunResult,
    resilient: RunResult,
    sb: dict[str, Any],
    sr: dict[str, Any],
) -> str:
    """The whole page."""
    compare = [
        ("calls", str(sb["calls"]), str(sr["calls"])),
        ("success rate", _pct(sb["success_rate"]), _pct(sr["success_rate"])),
        (
            "success outside the outage",
            _pct(sb["success_rate_outside_outage"]),
            _pct(sr["success_rate_outside_outage"]),
        ),
        ("latency p50", _ms(sb["p50"]), _ms(sr["p50"])),
        ("latency p95", _ms(sb["p95"]), _ms(sr["p95"])),
        ("latency p99", _ms(sb["p99"]), _ms(sr["p99"])),
        ("slowest call", _ms(sb["max_duration"]), _ms(sr["max_duration"])),
        ("calls that reached the upstream", str(sb["upstream_calls"]), str(sr["upstream_calls"])),
        ("load amplification", f"{sb['amplification']:.2f}x", f"{sr['amplification']:.2f}x"),
        ("retries", "-", "-" if sr["retry"] is None else str(sr["retry"]["retries"])),
    ]
    failures = [
        (s["name"], reason, str(n)) for s in (sb, sr) for reason, n in s["failures"].items()
    ]
    rejections = [(k, str(v)) for k, v in sr["rejections"].items()]
    transitions = [(f"{t:.2f} s", state) for t, state in sr["transitions"]]
    goal = [(w, f, t, "met" if m else "missed") for w, f, t, m in targets(sr)]
    phases = [
        (
            f"{p.start * options.duration:.1f}-{p.end * options.duration:.1f} s",
            p.name,
            p.label,
        )
        for p in TIMELINE
    ]
    style = (
        "body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        "th{background:#f4f4f4}"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>resilio demo</title>
<style>{style}</style></head><body>
<h1>resilio demo: a flaky upstream, bare vs resilient</h1>
<p>{options.rate:g} calls per second for {options.duration:g} s against the same scripted
faults (seed {options.seed}, {100 * options.error_rate:g} % transient 503s throughout), once
with a bare <code>httpx.AsyncClient</code> and once through <code>ResilientTransport</code>,
side by side.</p>
{timeline_svg(bare, resilient)}
<h2>Side by side</h2>
{_table(compare, ("", "bare httpx", "resilient"))}
<h2>Targets (resilient run)</h2>
{_table(goal, ("what", "figure", "target", ""))}
<h2>Failed calls by reason</h2>
{_table(failures, ("run", "reason", "calls"))}
<h2>Rejections and timeouts (resilient run)</h2>
{_table(rejections, ("what", "count"))}
<h2>Circuit breaker transitions (resilient run)</h2>
{_table(transitions, ("at", "state"))}
<h2>Timeline</h2>
{_table(phases, ("when", "phase", "what goes wrong"))}
</body></html>
"""
