"""The report as one self-contained HTML page: inline CSS, images as ``data:`` URIs, no script, no network.

It opens from disk (``file://``) and can be mailed or attached as it is: nothing it shows lives in
another file. Collapsed parts use ``<details>``, which browsers open without JavaScript.
"""
from __future__ import annotations

import base64
import re
from html import escape

from shared.report.doc import (Block, Bullets, Cell, Details, Document, Image, Para, Pre, Subheading, Svg, Table,
                               Tiles)

MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
        ".gif": "image/gif"}

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d1f23;background:#fafafa;
line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:18px 28px 60px;background:#fff}
h1{font-size:1.7em;margin:.4em 0 .1em}h2{border-bottom:2px solid #dde;padding-bottom:4px;margin-top:1.8em}
h3{margin:1.4em 0 .4em;color:#234}
.subtitle{color:#666;margin:0 0 1em}
nav{font-size:.92em;margin:.6em 0 1em}nav a{margin-right:1.1em;color:#2456a4;text-decoration:none}
.tiles{display:flex;flex-wrap:wrap;gap:10px;margin:.8em 0}
.tile{border:1px solid #d5dbe6;border-radius:8px;padding:8px 12px;background:#f4f7fc;min-width:150px}
.tile .v{font-size:1.2em;font-weight:600;color:#123}.tile .l{font-size:.8em;color:#556}
.muted{color:#777;font-size:.92em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.86em}
th,td{border:1px solid #dde;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f0f2f6}
td .sub,th .sub{display:block;font-size:.82em;color:#555}
table.scorecard td{text-align:right;white-space:nowrap}table.scorecard td:nth-child(-n+2){text-align:left}
table.scorecard td .sub{display:inline;margin-left:5px}
td.better{background:#bfe6c3}td.worse{background:#f3bcbc}
td.better-faint{background:#e6f5e8}td.worse-faint{background:#fbe6e6}td.same{background:#fff}
.bar{height:5px;background:#6d9bd3;border-radius:2px;margin-top:2px}
figure{margin:.8em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#666}
.lineage svg{max-width:100%;height:auto}
pre{background:#f6f7f9;padding:8px;overflow-x:auto;font-size:.85em}
code{background:#f1f2f5;padding:0 3px;border-radius:3px;font-size:.92em}
details{margin:.5em 0}summary{cursor:pointer;color:#2456a4}
.legend span{display:inline-block;padding:0 6px;margin-right:6px;border:1px solid #ccd}
"""


def inline(text: str) -> str:
    """Escape ``text`` and render its two marks: ``**bold**`` and ```code```."""
    out = escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)


def data_uri(path) -> str:
    mime = MIME.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _cell(c: str | Cell, tag: str) -> str:
    if not isinstance(c, Cell):
        return f"<{tag}>{inline(c)}</{tag}>"
    cls = f' class="{c.tone}"' if c.tone else ""
    title = f' title="{escape(c.title)}"' if c.title else ""
    sub = f'<span class="sub">{inline(c.sub)}</span>' if c.sub else ""
    bar = (f'<div class="bar" style="width:{max(0.0, min(1.0, c.bar)) * 100:.0f}%"></div>'
           if c.bar is not None else "")
    return f"<{tag}{cls}{title}>{inline(c.text)}{sub}{bar}</{tag}>"


def block(b: Block) -> str:
    if isinstance(b, Para):
        return f'<p class="muted">{inline(b.text)}</p>' if b.muted else f"<p>{inline(b.text)}</p>"
    if isinstance(b, Subheading):
        anchor = f' id="{escape(b.anchor)}"' if b.anchor else ""
        return f"<h3{anchor}>{inline(b.text)}</h3>"
    if isinstance(b, Bullets):
        return "<ul>" + "".join(f"<li>{inline(i)}</li>" for i in b.items) + "</ul>"
    if isinstance(b, Tiles):
        return '<div class="tiles">' + "".join(
            f'<div class="tile"><div class="v">{inline(v)}</div><div class="l">{inline(k)}</div></div>'
            for k, v in b.items) + "</div>"
    if isinstance(b, Table):
        css = f' class="{b.css}"' if b.css else ""
        head = "<tr>" + "".join(_cell(c, "th") for c in b.header) + "</tr>"
        body = "".join("<tr>" + "".join(_cell(c, "td") for c in row) + "</tr>" for row in b.rows)
        caption = f"<caption>{inline(b.caption)}</caption>" if b.caption else ""
        return f"<table{css}>{caption}<thead>{head}</thead><tbody>{body}</tbody></table>"
    if isinstance(b, Image):
        caption = f"<figcaption>{inline(b.caption)}</figcaption>" if b.caption else ""
        return f'<figure><img src="{data_uri(b.path)}" alt="{escape(b.alt)}">{caption}</figure>'
    if isinstance(b, Svg):
        return f'<figure class="lineage" aria-label="{escape(b.alt)}">{b.markup}</figure>'
    if isinstance(b, Pre):
        return f"<pre>{escape(b.text)}</pre>"
    if isinstance(b, Details):
        return f"<details><summary>{inline(b.summary)}</summary>" + "".join(block(x) for x in b.blocks) + "</details>"
    raise TypeError(f"unknown report block {type(b).__name__}")


def render(doc: Document) -> str:
    """The page (see module docstring)."""
    nav = " ".join(f'<a href="#{escape(s.anchor)}">{inline(s.title)}</a>' for s in doc.sections)
    body = "".join(f'<section><h2 id="{escape(s.anchor)}">{inline(s.title)}</h2>'
                   + "".join(block(b) for b in s.blocks) + "</section>" for s in doc.sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(doc.title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{inline(doc.title)}</h1><p class=\"subtitle\">{inline(doc.subtitle)}</p><nav>{nav}</nav>"
            f"{body}</main></body></html>\n")
