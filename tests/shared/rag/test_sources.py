"""Documents to index: held-out builtin docs, local folders (txt/md/jsonl/pdf), and clear errors."""
from __future__ import annotations

import pytest

from shared.data.documents import DataError
from shared.data.split import split_of
from shared.data.split import DOC_SPLIT_SEED as SPLIT_SEED, DOC_VAL_FRACTION as VAL_FRACTION
from shared.rag.sources import read_source
from tests.shared.rag.conftest import TOPICS, write_pdf


def test_builtin_docs_are_filtered_by_the_pretraining_split():
    val = list(read_source("builtin:python-docs", builtin_split="val", max_docs=4))
    assert len(val) == 4
    for row in val:
        corpus, doc_id = row["source"].split("#", 1)
        assert corpus == "builtin:python-docs"
        assert split_of(doc_id, VAL_FRACTION, SPLIT_SEED) == "val"
    train = list(read_source("builtin:python-docs", builtin_split="train", max_docs=4))
    assert not {r["source"] for r in train} & {r["source"] for r in val}


def test_a_folder_yields_every_supported_file_with_relative_ids(docs_dir):
    write_pdf(docs_dir / "manual.pdf", ["Quarterly report", "Revenue grew by ten percent."])
    rows = {r["source"]: r["text"] for r in read_source(str(docs_dir))}
    spec = str(docs_dir)
    assert rows[f"{spec}#json.md"] == TOPICS["json.md"]
    assert rows[f"{spec}#notes/bread.txt"] == TOPICS["notes/bread.txt"]
    assert "Photosynthesis" in rows[f"{spec}#faq.jsonl:2"]
    assert "Revenue grew by ten percent." in rows[f"{spec}#manual.pdf"]
    assert len(rows) == 6  # 2 .md + 1 .txt + 2 .jsonl records + 1 .pdf


def test_a_single_file_with_the_file_prefix(docs_dir):
    rows = list(read_source(f"file:{docs_dir / 'rivers.md'}"))
    assert rows == [{"source": f"file:{docs_dir / 'rivers.md'}#rivers.md", "text": TOPICS["rivers.md"]}]


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "does not exist; check the path"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "holds no .txt/.md/.jsonl/.parquet/.pdf files"),
    (lambda d: (d / "x.csv").write_text("a,b") and d / "x.csv", "unsupported suffix '.csv'"),
])
def test_unusable_sources_fail_with_the_fix(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        list(read_source(str(make(tmp_path))))


def test_unknown_builtin_and_hub_sources_are_rejected():
    with pytest.raises(DataError, match="unknown builtin corpus"):
        list(read_source("builtin:nope"))
    with pytest.raises(DataError, match="not indexable"):
        list(read_source("hf:some/dataset"))


def test_unreadable_files_name_the_file(docs_dir):
    (docs_dir / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match=r"latin1.txt is not valid UTF-8"):
        list(read_source(str(docs_dir)))
    (docs_dir / "latin1.txt").unlink()
    (docs_dir / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    with pytest.raises(DataError, match=r"broken.pdf is not a readable PDF"):
        list(read_source(str(docs_dir)))
