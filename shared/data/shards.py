"""Token shards: documents -> ``train.bin`` + ``val.bin`` + ``meta.json`` in one directory.

Each ``<split>.bin`` is a flat array of token ids (``uint16`` when the vocabulary has fewer than
65536 ids, else ``uint32``, native little-endian) that ``np.memmap`` opens directly: every
document's ids followed by the EOS id, documents in corpus order. ``meta.json`` holds the dtype,
vocab size, EOS id, per-split token / document / UTF-8 byte counts (bytes are what bits-per-byte
divides by), the tokenizer sha256 and the corpus ``fingerprint`` (see ``spool``).

Building is two passes: spool + fingerprint (``spool``), then tokenize (``encode``, locally or with
Ray Data) and append to the files in document order. When ``out_dir`` already holds a complete
build with the same fingerprint nothing is tokenized and ``ShardInfo.reused`` is true.
``meta.json`` is written last (atomically) and removed first on a rebuild, so a directory without
it is an unfinished build. Reading shards for training is ``dataset.TokenDataset``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from shared.data.documents import DataError, Document
from shared.data.encode import (
    BatchEncoder,
    encode_local,
    encode_ray,
    eos_id_of,
    load_tokenizer,
    read_tokenizer,
    token_dtype,
    vocab_size_of,
)
from shared.data.split import SPLITS
from shared.data.spool import FORMAT_VERSION, spool_documents

log = logging.getLogger(__name__)

META = "meta.json"


def bin_path(out_dir: str | Path, split: str) -> Path:
    return Path(out_dir) / f"{split}.bin"


@dataclass(frozen=True)
class ShardInfo:
    """A finished shard directory, as recorded in its ``meta.json``."""

    out_dir: Path
    dtype: str
    vocab_size: int
    n_tokens: dict[str, int]
    n_bytes: dict[str, int]
    n_docs: dict[str, int]
    fingerprint: str
    reused: bool = False

    @classmethod
    def from_meta(cls, out_dir: str | Path, meta: dict, reused: bool) -> "ShardInfo":
        fields = ("dtype", "vocab_size", "n_tokens", "n_bytes", "n_docs", "fingerprint")
        return cls(out_dir=Path(out_dir), reused=reused, **{k: meta[k] for k in fields})


def read_meta(out_dir: str | Path) -> dict:
    path = Path(out_dir) / META
    if not path.is_file():
        raise DataError(f"no {META} in {out_dir}: not a finished shard directory; build it with shared.data.build_shards")
    return json.loads(path.read_text(encoding="utf-8"))


def build_shards(
    docs: Iterable[Document],
    tokenizer_dir_or_path: str | Path,
    out_dir: str | Path,
    val_fraction: float = 0.05,
    seed: int = 0,
    engine: Literal["local", "ray"] = "local",
    eos_token: str = "<|endoftext|>",
    *,
    progress: bool = True,
) -> ShardInfo:
    """Tokenize ``docs`` into ``out_dir`` (or reuse an identical earlier build there).

    ``engine="ray"`` tokenizes with a Ray Data actor pool; the files are byte-identical to
    ``engine="local"``. ``progress`` shows a tqdm bar for the local engine.
    """
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    out_dir = Path(out_dir)
    tokenizer_json, tokenizer_sha = read_tokenizer(tokenizer_dir_or_path)
    tokenizer = load_tokenizer(tokenizer_json)
    eos_id = eos_id_of(tokenizer, eos_token)
    vocab_size = vocab_size_of(tokenizer)
    dtype = token_dtype(vocab_size)
    header = {"tokenizer_sha256": tokenizer_sha, "val_fraction": val_fraction, "seed": seed, "eos_token": eos_token}

    spool_dir = out_dir / ".spool"
    shutil.rmtree(spool_dir, ignore_errors=True)  # left over by an interrupted build
    try:
        spool = spool_documents(docs, spool_dir, header)
        cached = _reusable(out_dir, spool.fingerprint)
        if cached is not None:
            log.info("reusing shards in %s (fingerprint %s matches)", out_dir, spool.fingerprint[:12])
            return cached
        moves = spool.planner.finish()
        encoder_kwargs = {"tokenizer_json": tokenizer_json, "eos_id": eos_id, "dtype": dtype.name, "moves": moves}
        if engine == "ray":
            rows = encode_ray(spool.files, encoder_kwargs)
        else:
            rows = encode_local(spool.files, BatchEncoder(**encoder_kwargs))
        n_tokens = _write_bins(out_dir, rows, spool.n_docs, dtype, progress and engine == "local")
    finally:
        shutil.rmtree(spool_dir, ignore_errors=True)
    meta = {
        "format": FORMAT_VERSION,
        "dtype": dtype.name,
        "vocab_size": vocab_size,
        "eos_id": eos_id,
        "n_tokens": n_tokens,
        "n_docs": spool.planner.n_docs,
        "n_bytes": spool.planner.n_bytes,
        **header,
        "sources": spool.sources,
        "fingerprint": spool.fingerprint,
    }
    _write_json_atomic(out_dir / META, meta)
    return ShardInfo.from_meta(out_dir, meta, reused=False)


def _reusable(out_dir: Path, fingerprint: str) -> ShardInfo | None:
    """The existing build in ``out_dir`` if it is complete and has this fingerprint."""
    try:
        meta = read_meta(out_dir)
    except (DataError, json.JSONDecodeError):
        return None
    if meta.get("fingerprint") != fingerprint or meta.get("format") != FORMAT_VERSION:
        return None
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in SPLITS:
        path = bin_path(out_dir, split)
        if not path.is_file() or path.stat().st_size != meta["n_tokens"][split] * itemsize:
            return None
    return ShardInfo.from_meta(out_dir, meta, reused=True)


def _write_bins(out_dir: Path, rows: Iterator[pa.Table], n_docs: int, dtype: np.dtype, progress: bool) -> dict[str, int]:
    """Append encoded rows to ``<split>.bin`` in document order; returns tokens per split."""
    (out_dir / META).unlink(missing_ok=True)  # from here on the directory is an unfinished build
    tmp = {split: bin_path(out_dir, split).with_suffix(".bin.tmp") for split in SPLITS}
    files = {split: open(path, "wb") for split, path in tmp.items()}
    written = dict.fromkeys(SPLITS, 0)
    expected = 0  # index of the next document: rows must arrive in order and without gaps
    ok = False
    try:
        with tqdm(total=n_docs, unit="doc", desc="tokenizing", disable=not progress) as bar:
            for table in rows:
                for row in table.to_pylist():
                    if row["first"] != expected:
                        raise RuntimeError(
                            f"encoded batch starts at document {row['first']}, expected {expected}: "
                            "the engine reordered or lost batches; rerun with engine='local' and report it"
                        )
                    for split in SPLITS:
                        files[split].write(row[split])
                        written[split] += len(row[split])
                    expected += row["count"]
                    bar.update(row["count"])
        if expected != n_docs:
            raise RuntimeError(f"encoded {expected} of {n_docs} documents; rerun the build")
        ok = True
    finally:
        for f in files.values():
            f.close()
        for split, path in tmp.items():
            if ok:
                os.replace(path, bin_path(out_dir, split))
            else:
                path.unlink(missing_ok=True)
    return {split: written[split] // dtype.itemsize for split in SPLITS}


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
