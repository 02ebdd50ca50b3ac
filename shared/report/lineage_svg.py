"""The lineage as a picture: artifacts as boxes, parent edges as arrows, drawn as SVG by hand.

Rows are depths (an artifact sits one row below its deepest parent), so the journey reads top to
bottom; within a row, boxes sit under the mean position of their parents, which keeps most arrows
short and uncrossed. Each box shows the stage, its kind and one headline number (``box_number``).
Edges into a report (the scorecard, interpret, the quantize comparison) are drawn lighter: they
say "looked at", not "made from".
"""
from __future__ import annotations

from html import escape

from shared.report.collect import RunData, StageView
from shared.report.fmt import is_number, label, megabytes, num, pct

BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN = 170, 58, 22, 46, 12

#: Fill colours by artifact kind; anything else is drawn grey.
KIND_COLOURS = {"tokenizer": "#efe3fb", "hf-model": "#dcebfb", "dataset": "#fdebd3", "quantized": "#dff3e2",
                "gguf": "#dff3e2", "index": "#d8f1f1", "report": "#eeeeee", "reward-model": "#fbe0e6"}

#: Metrics whose value is a rate (0..1), shown as a percentage in a box.
RATE_HINTS = ("exact_match", "accurac", "win_rate", "refusal_rate", "format_ok", "agreement", "hit_rate")


def box_number(view: StageView) -> str:
    """The one number a box shows: the stage's main headline (the value after training, not before)."""
    m = view.metrics
    if view.kind == "report" and view.stage == "eval":
        return f"{len(view.artifact.parents)} models scored"
    # the value a stage ended with: not the one it started from, nor the earlier model's it compared with
    candidates = [k for k in view.headlines if not k.startswith(("initial_", "first_", "base_", "last_"))
                  and "_sft_" not in k]
    key = next((k for k in candidates if is_number(m.get(k))), None)
    if key is None:
        return ""
    v = m[key]
    if key == "bytes":
        return megabytes(v) + (f", Δppl {v2:+.3g}" if is_number(v2 := m.get("ppl_delta")) else "")
    shown = pct(v) if any(h in key for h in RATE_HINTS) and 0 <= v <= 1 else num(v, 4)
    name = label(key)
    if len(name) + len(shown) > 28 and "/" in name:  # the box is narrow: a per-model key keeps its metric only
        name = name.rsplit("/", 1)[-1]
    return f"{name} {shown}"


def _layout(data: RunData) -> tuple[dict[str, tuple[float, float]], dict[int, list[str]], float, float]:
    """Box positions (top-left), the rows (depth -> ids, left to right), and the drawing's width and height."""
    rows: dict[int, list[StageView]] = {}
    for view in data.stages:
        rows.setdefault(view.depth, []).append(view)
    order = {v.id: i for i, v in enumerate(data.stages)}
    pos: dict[str, tuple[float, float]] = {}
    width = max(len(r) for r in rows.values()) * (BOX_W + GAP_X) - GAP_X
    placed: dict[int, list[str]] = {}
    for depth in sorted(rows):
        def pull(v: StageView) -> tuple[float, int]:
            xs = [pos[p][0] for p in v.artifact.parents if p in pos]
            return (sum(xs) / len(xs) if xs else -1.0, order[v.id])
        row = sorted(rows[depth], key=pull)
        row_w = len(row) * (BOX_W + GAP_X) - GAP_X
        x0 = (width - row_w) / 2
        for i, v in enumerate(row):
            pos[v.id] = (x0 + i * (BOX_W + GAP_X), depth * (BOX_H + GAP_Y))
        placed[depth] = [v.id for v in row]
    height = (max(rows) + 1) * (BOX_H + GAP_Y) - GAP_Y
    return pos, placed, width, height


def _edges(data: RunData, pos: dict[str, tuple[float, float]],
           rows: dict[int, list[str]]) -> list[tuple[str, str, str, float | None]]:
    """``(parent, child, svg path, lane x or None)`` per edge. An edge to the next row is one S-curve; a longer one would
    cross the boxes between, so it runs down a lane beside those rows (lanes are spaced so parallel
    edges stay apart)."""
    depth = {v.id: v.depth for v in data.stages}
    lanes = {"left": 0, "right": 0}
    out = []
    for view in data.stages:
        cx, top = pos[view.id][0] + BOX_W / 2, pos[view.id][1]
        for parent in view.artifact.parents:
            if parent not in pos:
                continue
            px, py = pos[parent][0] + BOX_W / 2, pos[parent][1]
            between = [i for d in range(depth[parent] + 1, depth[view.id]) for i in rows.get(d, [])]
            if not between:
                bottom, bend = py + BOX_H, (top - py - BOX_H) / 2
                path = f"M{px:.1f},{bottom:.1f} C{px:.1f},{bottom + bend:.1f} {cx:.1f},{top - bend:.1f} {cx:.1f},{top - 1:.1f}"
                lane = None
            else:
                side = "left" if cx < px else "right"
                lanes[side] += 1
                k = lanes[side]
                if side == "left":
                    lane = min(pos[i][0] for i in between) - GAP_X - 6 * k
                else:
                    lane = max(pos[i][0] for i in between) + BOX_W + GAP_X + 6 * k
                # Orthogonal: down into the gap below the parent's row, along it to the lane, down the lane
                # to the gap above the child's row, along it, down into the child. Only gaps and lanes are
                # crossed, never a box; each edge's runs sit a little apart from its neighbours'.
                sx = px + (-1 if side == "left" else 1) * BOX_W * 0.3
                jitter = (k % 5) * 4 - 8
                g1, g2 = py + BOX_H + GAP_Y / 2 + jitter, top - GAP_Y / 2 + jitter
                path = (f"M{sx:.1f},{py + BOX_H:.1f} L{sx:.1f},{g1:.1f} L{lane:.1f},{g1:.1f} L{lane:.1f},{g2:.1f} "
                        f"L{cx:.1f},{g2:.1f} L{cx:.1f},{top - 1:.1f}")
            out.append((parent, view.id, path, lane))
    return out


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def lineage_svg(data: RunData) -> str:
    """The run's lineage as a standalone SVG document (no fonts or files from outside)."""
    pos, rows, width, height = _layout(data)
    edges = _edges(data, pos, rows)
    # The drawing's extent includes the lanes of long edges; shift everything into view.
    xs = [lane for *_, lane in edges if lane is not None]
    left = min([0.0, *xs]) - MARGIN
    right = max([width, *xs]) + MARGIN
    shift = f'transform="translate({-left:.1f},{MARGIN})"'
    kinds = {v.id: v.kind for v in data.stages}
    full_w, full_h = right - left, height + 2 * MARGIN
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {full_w:.0f} {full_h:.0f}" '
             f'width="{full_w:.0f}" height="{full_h:.0f}" role="img" font-family="Helvetica, Arial, sans-serif">',
             f"<title>Lineage of run {escape(data.run)}</title>",
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>'
             '<marker id="arrow-light" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#aaa"/></marker></defs>',
             f"<g {shift}>"]
    for parent, child, path, _ in edges:  # edges first, so boxes sit on top of them
        colour, marker = ("#aaa", "arrow-light") if kinds[child] == "report" else ("#555", "arrow")
        parts.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.3" stroke-linejoin="round" '
                     f'marker-end="url(#{marker})"><title>{escape(parent)} → {escape(child)}</title></path>')
    for view in data.stages:
        x, y = pos[view.id]
        fill = KIND_COLOURS.get(kinds[view.id], "#eeeeee")
        number = box_number(view)
        parts.append(f'<g><title>{escape(view.id)} ({escape(view.kind)})</title>'
                     f'<rect x="{x:.1f}" y="{y:.1f}" width="{BOX_W}" height="{BOX_H}" rx="7" fill="{fill}" '
                     f'stroke="#667" stroke-width="1"/>'
                     f'<text x="{x + BOX_W / 2:.1f}" y="{y + 18:.1f}" text-anchor="middle" font-size="13" '
                     f'font-weight="bold" fill="#222">{escape(_fit(view.stage, 22))}</text>'
                     f'<text x="{x + BOX_W / 2:.1f}" y="{y + 33:.1f}" text-anchor="middle" font-size="10.5" '
                     f'fill="#555">{escape(view.kind)}</text>'
                     f'<text x="{x + BOX_W / 2:.1f}" y="{y + 49:.1f}" text-anchor="middle" font-size="10.5" '
                     f'fill="#123">{escape(_fit(number, 30))}</text></g>')
    parts.append("</g></svg>")
    return "\n".join(parts)
