"""The Ray Data ingest pipeline into local-mode Qdrant, and the Retriever over what it built."""
from __future__ import annotations

import json

import pytest

from shared.data.documents import DataError
from shared.rag.index_config import IndexConfig
from shared.rag.ingest import CHUNKS, build_index
from shared.rag.retriever import IndexNotFound, Passage, Retriever
from tests.shared.rag.conftest import TOPICS


def _config(docs_dir, **overrides) -> IndexConfig:
    return IndexConfig(sources=[str(docs_dir)], chunk_chars=120, chunk_overlap=20, batch_size=4, upsert_batch=3,
                       **overrides)


@pytest.fixture(scope="module")
def built(ray_session, tmp_path_factory):
    """An index of the topic documents (built once for the module): ``(index_dir, docs_dir, metadata)``."""
    root = tmp_path_factory.mktemp("ingest")
    docs = root / "docs"
    for name, text in TOPICS.items():
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_text(text, encoding="utf-8")
    index_dir = root / "index"
    meta = build_index(_config(docs), index_dir)
    from shared.rag.store import _CLIENTS
    meta["lock_released"] = not any(str(index_dir) in key for key in _CLIENTS)
    return index_dir, docs, meta


def test_pipeline_writes_chunks_points_and_metadata(built):
    index_dir, docs, meta = built
    rows = [json.loads(line) for line in (index_dir / CHUNKS).read_text(encoding="utf-8").splitlines()]
    assert meta["chunks"] == len(rows) == meta["points"] > len(meta["sources"])
    assert meta["documents"] == 5 and meta["dimension"] == 384 and meta["qdrant"] == {"path": "qdrant"}
    texts = {f"{docs}#{name}": text for name, text in TOPICS.items()}
    for row in rows:  # payload offsets point into the source document
        if row["source"] in texts:
            assert texts[row["source"]][row["start"]:row["end"]] == row["text"]
    assert len({r["chunk_id"] for r in rows}) == len(rows)
    assert meta["lock_released"], "the pipeline must release the local folder for the next process"


def test_retriever_finds_the_right_document(built):
    index_dir, docs, _ = built
    retriever = Retriever.from_index(index_dir)
    assert Retriever.from_index(str(index_dir)) is retriever  # one client per folder per process
    top = retriever.search("How do I turn a JSON string into a Python dict?", top_k=3)
    assert isinstance(top[0], Passage) and top[0].source == f"{docs}#json.md"
    assert len(top) == 3 and top[0].score >= top[1].score >= top[2].score
    assert retriever.search("how long to knead dough", top_k=1)[0].source == f"{docs}#notes/bread.txt"
    assert retriever.search("json", top_k=10, score_threshold=0.99) == []
    with pytest.raises(ValueError, match="non-empty query"):
        retriever.search("  ")


def test_reingesting_the_same_documents_is_idempotent(built):
    index_dir, docs, meta = built
    before = (index_dir / CHUNKS).read_text(encoding="utf-8")
    again = build_index(_config(docs), index_dir)
    assert again["points"] == meta["points"] == again["chunks"] and again["pruned"] == 0
    assert (index_dir / CHUNKS).read_text(encoding="utf-8") == before


@pytest.mark.slow
def test_reingesting_prunes_the_chunks_of_removed_documents(built):
    index_dir, docs, meta = built
    (docs / "rivers.md").unlink()
    fewer = build_index(_config(docs), index_dir)
    assert fewer["pruned"] > 0 and fewer["points"] == meta["points"] - fewer["pruned"] == fewer["chunks"]
    assert all("rivers" not in p.source for p in Retriever.from_index(index_dir).search("Nile river", top_k=10))


def test_a_bad_file_inside_the_pipeline_is_one_clear_error(ray_session, docs_dir, tmp_path):
    (docs_dir / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match=r"latin1.txt is not valid UTF-8 \(byte 0xe9 at offset 3\); re-encode") as err:
        build_index(_config(docs_dir), tmp_path / "index")
    assert "\n" not in str(err.value)


def test_folders_that_are_not_indexes_say_how_to_build_one(tmp_path):
    with pytest.raises(IndexNotFound, match="not a finished index .*python -m ray_jobs.index"):
        Retriever.from_index(tmp_path)
    (tmp_path / "journey.json").write_text(json.dumps({"kind": "hf-model"}))
    with pytest.raises(IndexNotFound, match="is a hf-model artifact, not an index"):
        Retriever.from_index(tmp_path)
