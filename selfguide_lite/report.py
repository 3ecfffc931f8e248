"""report.html: metrics per round, the data funnel, and a plot, from manifest.json alone.

Self-contained HTML with an inline SVG chart, so it opens anywhere without extra packages.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from .store import atomic_write_text, read_json


def _svg_line(points: list[tuple[int, float]], label: str, width: int = 480, height: int = 220) -> str:
    if not points:
        return ""
    pad = 36
    xs = [p[0] for p in points]
    x_max = max(max(xs), 1)
    y_max = max(100.0, max(p[1] for p in points))

    def sx(x: float) -> float:
        return pad + (width - 2 * pad) * x / x_max

    def sy(y: float) -> float:
        return height - pad - (height - 2 * pad) * y / y_max

    path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(points))
    dots = "".join(
        f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4"/><text x="{sx(x):.1f}" y="{sy(y) - 8:.1f}" '
        f'text-anchor="middle" font-size="11">{y:.1f}</text>'
        for x, y in points
    )
    ticks = "".join(
        f'<text x="{sx(x):.1f}" y="{height - pad + 16}" text-anchor="middle" font-size="11">round {x}</text>' for x in xs
    )
    return (
        f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif">'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>'
        f'<text x="{pad}" y="{pad - 12}" font-size="12">{html.escape(label)} (0-{y_max:.0f})</text>'
        f'<path d="{path}" fill="none" stroke="#2a6fdb" stroke-width="2"/>'
        f'<g fill="#2a6fdb">{dots}</g>{ticks}</svg>'
    )


def _funnel(stats: dict[str, Any]) -> str:
    rows = []
    for key, value in stats.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or "-"
        rows.append(f"<tr><td>{html.escape(str(key))}</td><td>{html.escape(str(value))}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    manifest = read_json(run_dir / "manifest.json")
    rounds = sorted(manifest.get("rounds", {}).items(), key=lambda kv: int(kv[0]))
    table = []
    points = []
    for k, rec in rounds:
        m = rec.get("metrics") or {}
        em = f"{m['exact_match']:.1f}" if m else "-"
        rl = f"{m['rougeL']:.1f}" if m else "-"
        if m:
            points.append((int(k), float(m["primary"])))
        table.append(
            f"<tr><td>{k}</td><td>{html.escape(rec.get('status', ''))}</td><td>{rec.get('train_size', '-')}</td>"
            f"<td>{em}</td><td>{rl}</td><td>{'yes' if rec.get('promoted') else 'no'}</td>"
            f"<td>{html.escape(str(rec.get('gguf', '-')))}</td></tr>"
        )
    primary = (rounds[0][1].get("metrics") or {}).get("primary_metric", "score") if rounds else "score"
    funnels = "".join(
        f"<h3>round {k}</h3>{_funnel(rec['synth_stats'])}" for k, rec in rounds if rec.get("synth_stats")
    )
    stages = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(s.get('status', ''))}</td><td>{s.get('seconds', '-')}</td></tr>"
        for name, s in manifest.get("stages", {}).items()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>selfguide_lite run {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:960px}}table{{border-collapse:collapse;margin:.5em 0 1.5em}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:14px}}th{{background:#f3f3f3}}</style></head><body>
<h1>selfguide_lite: {html.escape(run_dir.name)}</h1>
<p>method: {html.escape(str(manifest.get('method')))} &middot; model: {html.escape(str(manifest.get('model')))}
&middot; task: {html.escape(str(manifest.get('task')))}</p>
<h2>Metrics per round</h2>
<table><tr><th>round</th><th>status</th><th>train rows</th><th>exact match</th><th>ROUGE-L</th><th>promoted</th><th>GGUF</th></tr>
{''.join(table)}</table>
{_svg_line(points, primary)}
<h2>Data funnel</h2>{funnels or '<p>no synthesis yet</p>'}
<h2>Stages</h2><table><tr><th>stage</th><th>status</th><th>seconds</th></tr>{stages}</table>
</body></html>"""
    return atomic_write_text(run_dir / "report.html", page)
