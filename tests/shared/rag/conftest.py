"""Fixtures for the retrieval tests: a small folder of documents on distinct topics, a PDF writer."""
from __future__ import annotations

from pathlib import Path

import pytest

#: One topic per document, so a query about one of them has exactly one right source.
TOPICS = {
    "json.md": "# The json module\n\nUse json.loads to parse a JSON string into Python objects, and json.dumps "
               "to serialize Python objects back to a JSON formatted string.\n",
    "rivers.md": "# Rivers\n\nThe Nile and the Amazon are the longest rivers on Earth. Rivers carry water from "
                 "mountains and rain down to the sea, carving valleys on the way.\n",
    "notes/bread.txt": "Baking bread: mix flour, water, yeast and salt, knead the dough for ten minutes, let it "
                       "rise for an hour, then bake it in a hot oven until the crust is brown.\n",
    "faq.jsonl": '{"text": "Cats sleep for most of the day and purr when they are content."}\n'
                 '{"text": "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen."}\n',
}


@pytest.fixture
def docs_dir(tmp_path) -> Path:
    """A folder of .md/.txt/.jsonl documents (see ``TOPICS``), nested one level."""
    root = tmp_path / "docs"
    for name, text in TOPICS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def write_pdf(path: Path, lines: list[str]) -> Path:
    """A minimal one-page PDF whose text layer is ``lines`` (Helvetica), with a correct xref table."""
    text = "\n".join(f"({line}) Tj T*" for line in lines)
    stream = f"BT /F1 12 Tf 14 TL 72 720 Td\n{text}\nET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path
