"""First pass of shard building: fingerprint the corpus, plan the split, spool the text to disk.

The cache check needs the fingerprint of the whole corpus before any tokenizing, and the
documents usually arrive as a one-shot generator (a streamed dataset), so this pass writes them
to parquet files (``index``, ``text``, ``val``) that the tokenizing pass then reads, locally or
with Ray Data. Memory stays bounded by one row group, whatever the corpus size.

The fingerprint is sha256 over a header (format version, tokenizer sha256, val_fraction, seed,
EOS token) and, per document in order, its source spec, id and text sha256: any change to the
data, its order, the tokenizer or the split settings changes it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from shared.data.documents import DataError, Document
from shared.data.split import SplitPlanner

#: Bump when the shard layout or the fingerprint recipe changes, so old caches are rebuilt.
FORMAT_VERSION = 1
#: Text per spool file: several files let Ray Data read in parallel.
PART_BYTES = 64 * 2**20
#: Text per row group: the unit held in memory while spooling.
GROUP_BYTES = 4 * 2**20

SPOOL_SCHEMA = pa.schema([("index", pa.int64()), ("text", pa.string()), ("val", pa.bool_())])


@dataclass
class Spool:
    """What the first pass learned: the spool files, the fingerprint and the split plan."""

    files: list[Path]
    fingerprint: str
    planner: SplitPlanner
    sources: list[str] = field(default_factory=list)

    @property
    def n_docs(self) -> int:
        return sum(self.planner.n_docs.values())


def spool_documents(docs: Iterable[Document], spool_dir: Path, header: dict) -> Spool:
    """Stream ``docs`` into ``spool_dir`` while fingerprinting and assigning splits."""
    planner = SplitPlanner(header["val_fraction"], header["seed"])
    digest = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, **header}, sort_keys=True).encode())
    writer = _PartWriter(spool_dir)
    sources: dict[str, None] = {}  # insertion-ordered set
    for index, doc in enumerate(docs):
        data = doc.text.encode("utf-8")
        record = [doc.source, doc.id, hashlib.sha256(data).hexdigest()]
        digest.update(json.dumps(record).encode() + b"\n")  # json quoting keeps fields unambiguous
        split = planner.add(index, doc.id, len(data))
        writer.add(index, doc.text, split == "val", len(data))
        sources.setdefault(doc.source)
    files = writer.close()
    if not files:
        raise DataError("no documents to shard; check the corpus (iter_documents raises on an empty source)")
    return Spool(files, digest.hexdigest(), planner, list(sources))


class _PartWriter:
    """Appends rows to ``part-00000.parquet``, ``part-00001.parquet``, ... in row groups."""

    def __init__(self, spool_dir: Path):
        self.dir = spool_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []
        self.writer: pq.ParquetWriter | None = None
        self.rows: dict[str, list] = {name: [] for name in SPOOL_SCHEMA.names}
        self.group_bytes = self.part_bytes = 0

    def add(self, index: int, text: str, val: bool, n_bytes: int) -> None:
        for name, value in zip(SPOOL_SCHEMA.names, (index, text, val)):
            self.rows[name].append(value)
        self.group_bytes += n_bytes
        if self.group_bytes >= GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self.rows["index"]:
            return
        if self.writer is None:
            self.files.append(self.dir / f"part-{len(self.files):05d}.parquet")
            self.writer = pq.ParquetWriter(self.files[-1], SPOOL_SCHEMA)
        self.writer.write_table(pa.Table.from_pydict(self.rows, schema=SPOOL_SCHEMA))
        self.part_bytes += self.group_bytes
        self.rows = {name: [] for name in SPOOL_SCHEMA.names}
        self.group_bytes = 0
        if self.part_bytes >= PART_BYTES:
            self._close_part()

    def _close_part(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer, self.part_bytes = None, 0

    def close(self) -> list[Path]:
        self._flush()
        self._close_part()
        return self.files
