"""The run report: ``runs/<run>/report/index.html`` (one self-contained page) and ``report.md``.

Made from the registry alone: the artifacts' manifests and the files their stages wrote
(``collect``), turned into sentences and tables from the numbers (``findings``, ``sections``,
``table``, ``lineage_svg``) and rendered twice (``html``, ``markdown``). ``journey report RUN``
remakes it; ``journey run`` writes it at the end. Nothing here imports torch: rendering a report
takes well under a second.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from shared.registry import MANIFEST, ArtifactNotFound, Registry
from shared.report import html, markdown
from shared.report.collect import RunData, collect
from shared.report.sections import document

REPORT_DIR = "report"


def report_dir(registry: Registry, run: str) -> Path:
    """Where ``run``'s report goes: ``<runs>/<run>/report/``."""
    return registry.root / run / REPORT_DIR


def write_report(registry: Registry, run: str) -> Path:
    """Write ``<run>/report/index.html`` and ``report.md`` (with its pictures) and return the HTML's path.

    The folder is the report's alone and is rewritten whole, so pictures of an earlier report never
    linger. Raises ``ArtifactNotFound`` when ``run`` has no finished artifacts under ``registry``.
    """
    data = collect(registry, run)
    out = report_dir(registry, run)
    if (out / MANIFEST).exists():
        raise FileExistsError(f"{out} is an artifact (a stage named {REPORT_DIR!r}), so the report cannot be "
                              f"written there; rename that stage")
    doc = document(data)
    staging = Path(tempfile.mkdtemp(prefix=f".{REPORT_DIR}.", dir=out.parent))
    try:
        (staging / "report.md").write_text(markdown.render(doc, staging), encoding="utf-8")
        (staging / "index.html").write_text(html.render(doc), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)  # readers see the old report or the new one, never half of one
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out / "index.html"


__all__ = ["REPORT_DIR", "ArtifactNotFound", "RunData", "collect", "document", "report_dir", "write_report"]
