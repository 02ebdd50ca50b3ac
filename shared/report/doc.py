"""The report as plain blocks, rendered twice: to one self-contained HTML page and to Markdown.

The sections (``shared.report.sections``) build a ``Document`` of these blocks from the run's
numbers; ``shared.report.html`` and ``shared.report.markdown`` only lay them out, so the two files
always say the same thing. Text may carry two inline marks, rendered by both: ``**bold**`` and
```code```.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union


@dataclass
class Para:
    """A paragraph. ``muted``: a note on what is absent and how to get it."""

    text: str
    muted: bool = False


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Tiles:
    """Big numbers side by side: ``(label, value)``; Markdown shows them as a two-column table."""

    items: list[tuple[str, str]]


@dataclass
class Cell:
    """A table cell. ``sub``: a smaller second line (a delta); ``tone``: better / worse / same, with a
    ``-faint`` suffix when the change is within the noise; ``bar``: 0..1, drawn as a bar in HTML."""

    text: str
    sub: str = ""
    tone: str | None = None
    title: str = ""
    bar: float | None = None


@dataclass
class Table:
    header: list[Union[str, Cell]]
    rows: list[list[Union[str, Cell]]]
    caption: str = ""
    css: str = ""  # an extra class for the HTML table ("scorecard": the colour table)


@dataclass
class Image:
    """A PNG (or SVG) file of the run; ``name`` is its unique file name next to ``report.md``."""

    path: Path
    name: str
    alt: str
    caption: str = ""


@dataclass
class Svg:
    """A picture drawn here; inlined in HTML, written to ``name`` beside ``report.md``."""

    markup: str
    name: str
    alt: str


@dataclass
class Pre:
    text: str


@dataclass
class Details:
    """Collapsed by default (HTML ``<details>``, no script needed); Markdown shows it under a bold line."""

    summary: str
    blocks: list["Block"]


@dataclass
class Subheading:
    text: str
    anchor: str = ""


Block = Union[Para, Bullets, Tiles, Table, Image, Svg, Pre, Details, Subheading]


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    title: str
    subtitle: str
    sections: list[Section]


def images(blocks: list[Block]) -> list[Union[Image, Svg]]:
    """Every image and drawing in ``blocks``, nested ones included, in reading order."""
    found: list[Union[Image, Svg]] = []
    for block in blocks:
        if isinstance(block, (Image, Svg)):
            found.append(block)
        elif isinstance(block, Details):
            found.extend(images(block.blocks))
    return found
