"""Pretraining corpora: read documents, split them, tokenize them into shards, batch the shards.

    docs = iter_documents("builtin:python-code", max_bytes=2_000_000)
    info = build_shards(docs, "runs/x/tokenizer", "runs/x/data")      # train.bin, val.bin, meta.json
    train = TokenDataset(info.out_dir, "train")
    x, y = train.get_batch(8, 256, generator)

Modules: ``sources`` (the ``iter_documents`` entry point) over ``builtin`` / ``local`` / ``hub``;
``split`` (hash split by document id); ``spool`` + ``encode`` + ``shards`` (building);
``dataset`` (reading). Instruction and preference data (SFT/DPO rows, their checks) live in
the subpackage ``shared.data.instructions``.
"""
from shared.data.dataset import TokenDataset
from shared.data.documents import DataError, Document
from shared.data.shards import ShardInfo, build_shards, read_meta
from shared.data.sources import iter_corpus, iter_documents
from shared.data.split import DOC_SPLIT_SEED, DOC_VAL_FRACTION, is_heldout_doc, split_of

__all__ = [
    "DOC_SPLIT_SEED",
    "DOC_VAL_FRACTION",
    "DataError",
    "Document",
    "ShardInfo",
    "TokenDataset",
    "build_shards",
    "iter_corpus",
    "is_heldout_doc",
    "iter_documents",
    "read_meta",
    "split_of",
]
