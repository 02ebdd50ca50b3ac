"""The report as Markdown (``report.md``): the same blocks as the HTML page, with the pictures as
files beside it (each ``Image``'s ``name``; the lineage as ``lineage.svg``), so it reads on GitHub or
in an editor. Cell colours become marks: ▲ better than the model it came from, ▼ worse, ≈ a change
within the noise.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from shared.report.doc import (Block, Bullets, Cell, Details, Document, Image, Para, Pre, Subheading, Svg, Table,
                               Tiles)

MARKS = {"better": " ▲", "worse": " ▼", "better-faint": " ≈▲", "worse-faint": " ≈▼", "same": ""}
LEGEND = "▲ better than the model it was made from, ▼ worse, ≈ within 1.96 standard errors."


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _cell(c: str | Cell) -> str:
    if not isinstance(c, Cell):
        return _escape_cell(c)
    text = c.text + (f" ({c.sub})" if c.sub else "") + MARKS.get(c.tone or "", "")
    return _escape_cell(text)


def _table(t: Table) -> list[str]:
    lines = ["| " + " | ".join(_cell(c) for c in t.header) + " |", "|" + "---|" * len(t.header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in t.rows]
    if t.css == "scorecard":
        lines += ["", LEGEND]
    return lines


def block(b: Block, out_dir: Path) -> list[str]:
    """Markdown lines of ``b``; its pictures are copied (or written) into ``out_dir``."""
    if isinstance(b, Para):
        return [f"*{b.text}*" if b.muted else b.text, ""]
    if isinstance(b, Subheading):
        return [f"### {b.text}", ""]
    if isinstance(b, Bullets):
        return [f"- {i}" for i in b.items] + [""]
    if isinstance(b, Tiles):
        return _table(Table(["", ""], [[k, f"**{v}**"] for k, v in b.items])) + [""]
    if isinstance(b, Table):
        return _table(b) + [""]
    if isinstance(b, Image):
        shutil.copyfile(b.path, out_dir / b.name)
        return [f"![{b.alt}]({b.name})", ""] + ([f"*{b.caption}*", ""] if b.caption else [])
    if isinstance(b, Svg):
        (out_dir / b.name).write_text(b.markup, encoding="utf-8")
        return [f"![{b.alt}]({b.name})", ""]
    if isinstance(b, Pre):
        return ["```", b.text, "```", ""]
    if isinstance(b, Details):
        return [f"**{b.summary}**", ""] + [line for x in b.blocks for line in block(x, out_dir)]
    raise TypeError(f"unknown report block {type(b).__name__}")


def render(doc: Document, out_dir: Path) -> str:
    """``report.md``'s text; writes the pictures it references into ``out_dir``."""
    lines = [f"# {doc.title}", "", doc.subtitle, "",
             " · ".join(f"[{s.title}](#{s.anchor})" for s in doc.sections), ""]
    for s in doc.sections:
        lines += [f'<a id="{s.anchor}"></a>', "", f"## {s.title}", ""]
        for b in s.blocks:
            lines += block(b, out_dir)
    return "\n".join(lines).rstrip() + "\n"
