"""Tokenization of spooled documents into shard bytes, on this process or as a Ray Data pipeline.

Both engines run the same :class:`BatchEncoder` over the same spooled batches (see ``spool``) and
yield the same rows ``(first, count, train, val)``: the index of the batch's first document, how
many documents it holds, and the bytes to append to ``train.bin`` / ``val.bin`` (token ids of
each document followed by the EOS id, already in the shard dtype). The writer appends rows in
``first`` order, which is why the two engines produce identical files.

Special tokens are not inserted (``add_special_tokens=False``) and text that happens to spell a
special token (say ``<|endoftext|>`` inside a web page) is encoded as plain text
(``encode_special_tokens = True``): only the EOS the shard writer appends marks a boundary.
This module does not decide splits or write files.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer

from shared.data.documents import DataError

#: Documents per encode call: large enough for encode_batch's threads, small enough to stream.
BATCH_DOCS = 512

ROW_SCHEMA = pa.schema(
    [("first", pa.int64()), ("count", pa.int64()), ("train", pa.large_binary()), ("val", pa.large_binary())]
)


def read_tokenizer(tokenizer_dir_or_path: str | Path) -> tuple[str, str]:
    """(tokenizer.json text, its sha256) from a tokenizer directory or the json file itself."""
    path = Path(tokenizer_dir_or_path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise DataError(
            f"no tokenizer at {file}; pass a directory holding tokenizer.json (a trained tokenizer "
            "artifact) or the path of the json file"
        )
    data = file.read_bytes()
    return data.decode("utf-8"), hashlib.sha256(data).hexdigest()


def load_tokenizer(tokenizer_json: str) -> Tokenizer:
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.encode_special_tokens = True  # why: see the module docstring
    return tokenizer


def vocab_size_of(tokenizer: Tokenizer) -> int:
    """One more than the largest id, which is what an embedding table must hold."""
    return max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 2**16 else np.dtype(np.uint32)


def eos_id_of(tokenizer: Tokenizer, eos_token: str) -> int:
    eos_id = tokenizer.token_to_id(eos_token)
    if eos_id is None:
        raise DataError(
            f"tokenizer has no token {eos_token!r}; train it with that special token or pass eos_token=<its EOS token>"
        )
    return eos_id


class BatchEncoder:
    """Turns a spooled batch (``index``, ``text``, ``val``) into one :data:`ROW_SCHEMA` row.

    ``moves`` overrides the hashed split of a few documents (the planner's empty-split repair).
    Constructed once per Ray actor, so the tokenizer is parsed once per worker, not per batch.
    """

    def __init__(self, tokenizer_json: str, eos_id: int, dtype: str, moves: dict[int, str], threads: int | None = None):
        if threads is not None:
            # tokenizers' thread pool (rayon) reads this when first used, which in a fresh Ray
            # actor is after this line. A runtime_env would do the same but doubles actor startup.
            os.environ["RAYON_NUM_THREADS"] = str(threads)
        self.tokenizer = load_tokenizer(tokenizer_json)
        self.eos = np.array([eos_id], dtype=dtype)
        self.dtype = np.dtype(dtype)
        self.moves = moves

    def __call__(self, batch: pa.Table) -> pa.Table:
        if batch.num_rows == 0:
            return ROW_SCHEMA.empty_table()
        index = batch.column("index").to_pylist()
        is_val = batch.column("val").to_pylist()
        encodings = self.tokenizer.encode_batch_fast(batch.column("text").to_pylist(), add_special_tokens=False)
        parts: dict[str, list[np.ndarray]] = {"train": [], "val": []}
        for i, val, encoding in zip(index, is_val, encodings):
            split = self.moves.get(i, "val" if val else "train")
            parts[split] += [np.asarray(encoding.ids, dtype=self.dtype), self.eos]
        row = {split: [np.concatenate(arrays).tobytes() if arrays else b""] for split, arrays in parts.items()}
        return pa.Table.from_pydict({"first": [index[0]], "count": [len(index)], **row}, schema=ROW_SCHEMA)


def encode_local(spool_files: list[Path], encoder: BatchEncoder) -> Iterator[pa.Table]:
    """Encode the spool in this process; ``encode_batch`` still uses every core."""
    for file in spool_files:
        for record_batch in pq.ParquetFile(file).iter_batches(batch_size=BATCH_DOCS):
            yield encoder(pa.Table.from_batches([record_batch]))


def encode_ray(spool_files: list[Path], encoder_kwargs: dict) -> Iterator[pa.Table]:
    """Encode the spool as a Ray Data pipeline: read parquet -> actor pool of BatchEncoders.

    The spool must be readable by every worker (true on one machine; on a cluster, ``out_dir``
    must be shared storage, which the training job needs anyway). Each actor tokenizes with one
    thread so that N actors use N cores instead of N x cores. Order is preserved so rows arrive
    sorted by ``first``; the writer still checks it.
    """
    import ray

    if not ray.is_initialized():
        ray.init()  # what Ray Data would do on first use; we need the CPU count before that
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    context = ray.data.DataContext.get_current()
    saved = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # a Dataset snapshots the context it is built in
    try:
        dataset = ray.data.read_parquet([str(f) for f in spool_files]).map_batches(
            BatchEncoder,
            fn_constructor_kwargs={**encoder_kwargs, "threads": 1},
            batch_size=BATCH_DOCS,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cpus),
            num_cpus=1,
        )
    finally:
        context.execution_options.preserve_order = saved
    yield from dataset.iter_batches(batch_format="pyarrow", batch_size=None)
