"""Server-rendered SVG: bar charts for the costs and similarity pages and the trace
waterfall. Geometry is in SVG attributes (no inline CSS, which the page's
Content-Security-Policy forbids); colours come from classes in ``console.css``."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from markupsafe import Markup, escape

from synthhost.gateway.console.data import Bar

ROW_H = 22
LABEL_W = 260
CHART_W = 640


def _num(value: float | Decimal) -> str:
    return f"{float(value):.2f}"


def bar_chart(title: str, items: Sequence[tuple[str, float | Decimal]], unit: str = "USD") -> Markup:
    """Horizontal bars, one per item, labelled with its value; an accessible title."""
    if not items:
        return Markup('<p class="empty">No data in this range.</p>')
    peak = max(float(v) for _, v in items) or 1.0
    height = ROW_H * len(items) + 8
    width = LABEL_W + CHART_W + 120
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for i, (label, value) in enumerate(items):
        y = 4 + i * ROW_H
        w = max(float(value) / peak * CHART_W, 1.0 if float(value) else 0.0)
        text = f"{float(value):.6f}".rstrip("0").rstrip(".") if unit == "USD" else str(value)
        parts.append(
            f'<text class="label" x="{LABEL_W - 8}" y="{y + 15}" text-anchor="end">{escape(label[:40])}</text>'
            f'<rect class="bar" x="{LABEL_W}" y="{y + 3}" width="{_num(w)}" height="{ROW_H - 6}">'
            f'<title>{escape(label)}: {escape(text)} {escape(unit)}</title></rect>'
            f'<text class="value" x="{_num(LABEL_W + w + 6)}" y="{y + 15}">{escape(text)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def waterfall(bars: Sequence[Bar], total_ms: float) -> Markup:
    """One row per span, indented by depth, its bar placed and sized by time."""
    height = ROW_H * len(bars) + 24
    width = LABEL_W + CHART_W + 90
    scale = CHART_W / total_ms if total_ms > 0 else 0.0
    parts = [f'<svg class="waterfall" role="img" viewBox="0 0 {width} {height}" width="100%" '
             f'aria-label="Waterfall of {len(bars)} spans over {total_ms:.1f} ms">'
             f'<line class="axis" x1="{LABEL_W}" y1="{height - 18}" x2="{LABEL_W + CHART_W}" y2="{height - 18}"/>'
             f'<text class="value" x="{LABEL_W}" y="{height - 4}">0 ms</text>'
             f'<text class="value" x="{LABEL_W + CHART_W}" y="{height - 4}" text-anchor="end">'
             f'{total_ms:.1f} ms</text>']
    for i, bar in enumerate(bars):
        y = i * ROW_H
        x = LABEL_W + bar.offset_ms * scale
        w = max((bar.duration_ms or 0.0) * scale, 2.0)
        label = ("  " * bar.depth + f"{bar.kind} {bar.name}")[:44]
        duration = "running" if bar.duration_ms is None else f"{bar.duration_ms:.1f} ms"
        parts.append(
            f'<g class="span {escape(bar.kind)} {escape(bar.status)}" data-span-id="{escape(bar.span_id)}">'
            f'<text class="label" x="{8 + bar.depth * 12}" y="{y + 15}">{escape(label)}</text>'
            f'<rect class="bar" x="{_num(x)}" y="{y + 3}" width="{_num(w)}" height="{ROW_H - 6}">'
            f'<title>{escape(bar.name)}: {duration}</title></rect>'
            f'<text class="value" x="{_num(min(x + w + 4, LABEL_W + CHART_W))}" y="{y + 15}">'
            f'{escape(duration)}</text></g>')
    parts.append("</svg>")
    return Markup("".join(parts))
