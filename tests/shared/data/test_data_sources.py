"""iter_documents: builtin corpora, local files, hub-schema files, budgets and errors."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared.data import DataError, Document, iter_documents
from shared.data.builtin import (EXCLUDED_DIRS, _without, heldout_paragraphs, module_docstrings, module_id, module_name,
                                 stdlib_files, stdlib_root)
from shared.data.documents import split_sections
from shared.data.split import is_heldout_doc


def utf8_size(docs: list[Document]) -> int:
    return sum(len(d.text.encode("utf-8")) for d in docs)


# ---------------------------------------------------------------- builtin corpora


@pytest.fixture(scope="module")
def python_docs() -> list[Document]:
    return list(iter_documents("builtin:python-docs", max_bytes=600_000))


def test_python_docs_is_english_prose(python_docs):
    topics = [d for d in python_docs if d.id.startswith("topic:")]
    modules = [d for d in python_docs if d.id.startswith("module:")]
    assert len(topics) > 50 and len(modules) > 10, "both topics and module docstrings are present"
    assert all(d.source == "builtin:python-docs" for d in python_docs)
    text = "".join(d.text for d in python_docs)
    words = re.findall(r"[A-Za-z]+", text)
    common = sum(w.lower() in {"the", "of", "a", "is", "to", "and", "in"} for w in words)
    assert common / len(words) > 0.1, "ordinary English function words are frequent"
    # Docstrings, not source: hardly any line starts a definition.
    lines = [line for d in modules for line in d.text.splitlines()]
    code_lines = sum(line.lstrip().startswith(("def ", "class ", "import ")) for line in lines)
    assert code_lines / len(lines) < 0.05
    json_doc = module_docstrings(stdlib_root() / "json" / "decoder.py", "json.decoder")
    assert json_doc.startswith("json.decoder\nImplementation of JSONDecoder")
    assert "json.decoder.JSONDecoder.decode\n" in json_doc


def test_max_bytes_is_a_hard_cap_and_order_is_stable(python_docs):
    assert 600_000 - 4 <= utf8_size(python_docs) <= 600_000  # the last doc is cut at a char boundary
    again = list(iter_documents("builtin:python-docs", max_bytes=600_000))
    assert again == python_docs
    small = list(iter_documents("builtin:python-docs", max_bytes=5_000))
    assert small[:-1] == python_docs[: len(small) - 1], "a smaller budget yields a prefix"
    assert utf8_size(small) <= 5_000


def test_python_code_is_stdlib_source():
    docs = list(iter_documents("builtin:python-code", max_bytes=400_000))
    assert len(docs) > 5 and utf8_size(docs) <= 400_000
    ids = [d.id for d in docs]
    assert ids == sorted(ids) and all(i.startswith("module:") for i in ids)
    paths = [i.removeprefix("module:") for i in ids]
    assert not any(set(p.split("/")[:-1]) & EXCLUDED_DIRS for p in paths)
    assert not any(p.split("/")[-1].startswith("test_") for p in paths)
    for doc in docs[:-1]:  # the last one may be cut mid-file
        ast.parse(doc.text)
    assert any("def " in d.text and "import " in d.text for d in docs)


def test_a_module_has_one_id_and_one_split_in_both_builtin_corpora():
    """The code file holds the docs document's docstrings: both must be held out, or neither."""
    code = {d.id: d.text for d in iter_documents("builtin:python-code")}
    docs = [d for d in iter_documents("builtin:python-docs") if d.id.startswith("module:")]
    assert len(docs) > 400 and sum(d.id not in code for d in docs) < 5  # the few left out: see the next test
    heldout = [d for d in docs if is_heldout_doc(d.id)]
    assert heldout, "the held-out split keeps some modules aside"
    # the same document, not just the same name: the code holds the docstring the docs document opens with
    assert all(d.text.splitlines()[1] in code[d.id] for d in heldout if len(d.text.splitlines()) > 1)


def test_no_training_document_repeats_a_heldout_paragraph():
    """Topics that contain other topics' sections and copied docstrings lose the copy outside the held-out split."""
    root = stdlib_root()
    held = heldout_paragraphs(root)
    assert len(held) > 100
    from pydoc_data.topics import topics

    for doc in iter_documents("builtin:python-docs"):
        kind, name = doc.id.split(":", 1)
        if is_heldout_doc(doc.id):  # held-out text is never changed
            raw = (topics[name].strip() + "\n" if kind == "topic"
                   else module_docstrings(root / name, module_name(Path(name))))
            assert doc.text == raw, doc.id
        else:
            assert not held & {" ".join(b.split()) for b in re.split(r"\n\s*\n", doc.text)}, doc.id
    code = list(iter_documents("builtin:python-code"))
    files = {module_id(p.relative_to(root)) for p in stdlib_files(root) if p.read_text(encoding="utf-8").strip()}
    left_out = files - {d.id for d in code}
    assert len(left_out) < 5, f"only copies of held-out docstrings are left out, not {sorted(left_out)}"
    for doc in code:
        if not is_heldout_doc(doc.id):
            path = root / doc.id.removeprefix("module:")
            docstrings = module_docstrings(path, module_name(path.relative_to(root)))
            assert not held & {" ".join(b.split()) for b in re.split(r"\n\s*\n", docstrings)}, doc.id


def test_a_training_text_loses_only_the_heldout_paragraphs():
    held = frozenset({" ".join(("the shared paragraph " * 5).split())})  # held paragraphs are whitespace-collapsed
    text = "title\nintro\n\n  the shared\nparagraph " + "the shared paragraph " * 4 + "\n\n\nlast words\n"
    assert _without(held, "module:train-side.py", text) == "title\nintro\n\nlast words\n"
    assert _without(held, "module:train-side.py", "nothing shared\n\nhere\n") == "nothing shared\n\nhere\n"
    only = "the shared paragraph " * 5
    assert _without(held, "module:train-side.py", only) == ""
    heldout_id = next(f"module:m{i}.py" for i in range(1000) if is_heldout_doc(f"module:m{i}.py"))
    assert _without(held, heldout_id, text) == text


# ---------------------------------------------------------------- local files


def test_text_file_is_one_document_or_sections_that_join_back(tmp_path):
    small = tmp_path / "note.md"
    small.write_text("# Title\n\nSome words.\n", encoding="utf-8")
    assert list(iter_documents(str(small))) == [Document("note.md", "# Title\n\nSome words.\n", str(small))]

    paragraphs = [f"Paragraph {i} é.\nSecond line {i}.\n" for i in range(200)]
    big = tmp_path / "book.txt"
    big.write_text("\n".join(paragraphs), encoding="utf-8")
    docs = list(iter_documents(f"file:{big}", chunk_bytes=1_000))
    assert len(docs) > 5
    assert [d.id for d in docs] == [f"book.txt#{k}" for k in range(len(docs))]
    assert "".join(d.text for d in docs) == big.read_text(encoding="utf-8")
    assert all(len(d.text.encode()) <= 1_000 for d in docs)


def test_split_sections_falls_back_to_lines_and_keeps_every_byte():
    text = "".join(f"line {i}\n" for i in range(100)) + "\n\n" + "x" * 500
    pieces = split_sections(text, 64)
    assert "".join(pieces) == text
    assert max(len(p) for p in pieces[:-1]) <= 64


def test_directory_reads_supported_files_recursively_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("zed", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"body": "first"}) + "\n\n" + json.dumps({"body": "second"}) + "\n", encoding="utf-8"
    )
    pq.write_table(pa.table({"body": ["p0", None, "p2"]}), tmp_path / "c.parquet")
    (tmp_path / "ignored.csv").write_text("x,y", encoding="utf-8")
    docs = list(iter_documents(str(tmp_path), text_field="body"))
    assert [(d.id, d.text) for d in docs] == [
        ("a.jsonl:1", "first"),
        ("a.jsonl:3", "second"),
        ("b/z.txt", "zed"),
        ("c.parquet:0", "p0"),
        ("c.parquet:2", "p2"),
    ]


# ---------------------------------------------------------------- hub-schema data through hf:


def fineweb_rows(n: int) -> dict[str, list]:
    return {
        "text": [f"Document {i} teaches photosynthesis in plain words." for i in range(n)],
        "id": [f"<urn:uuid:{i:08d}>" for i in range(n)],
        "dump": ["CC-MAIN-2024-10"] * n,
        "url": [f"https://example.org/{i}" for i in range(n)],
        "date": ["2024-02-21T00:00:00Z"] * n,
        "file_path": ["s3://commoncrawl/x.warc.gz"] * n,
        "language": ["en"] * n,
        "language_score": [0.97] * n,
        "token_count": [9] * n,
        "score": [3.1] * n,
        "int_score": [3] * n,
    }


def test_hf_fineweb_schema_parquet(tmp_path):
    path = tmp_path / "fineweb.parquet"
    pq.write_table(pa.table(fineweb_rows(5)), path)
    docs = list(iter_documents(f"hf:{path}"))
    assert [d.id for d in docs] == [f"<urn:uuid:{i:08d}>" for i in range(5)]
    assert docs[3].text == "Document 3 teaches photosynthesis in plain words."
    # The hub spec itself, pointed at a local copy: same ids, no network.
    spec = "hf:HuggingFaceFW/fineweb-edu:sample-10BT"
    same = list(iter_documents(spec, data_files=str(path)))
    assert [(d.id, d.text) for d in same] == [(d.id, d.text) for d in docs]
    assert same[0].source == spec
    # The generic builder form, with a budget.
    capped = list(iter_documents("hf:parquet", data_files=[str(path)], max_bytes=60))
    assert utf8_size(capped) <= 60 and capped[0] == Document(docs[0].id, docs[0].text, "hf:parquet")


def test_hf_code_schema_uses_content_field(tmp_path):
    rows = {
        "content": ["def add(a, b):\n    return a + b\n", "print('hi')\n"],
        "path": ["src/add.py", "main.py"],
        "repo_name": ["octo/add", "octo/hi"],
        "size": [33, 12],
        "lang": ["Python", "Python"],
    }
    parquet = tmp_path / "code.parquet"
    pq.write_table(pa.table(rows), parquet)
    jsonl = tmp_path / "code.jsonl"
    jsonl.write_text("".join(json.dumps(dict(zip(rows, r))) + "\n" for r in zip(*rows.values())), encoding="utf-8")
    for path in (parquet, jsonl):
        docs = list(iter_documents(f"hf:{path}", text_field="content"))
        assert [d.text for d in docs] == rows["content"]
        assert docs[1].id.endswith("/1"), "no id column: ids are <dataset>/<row>"
    with pytest.raises(DataError, match=r"no field 'text'.*content.*text_field="):
        list(iter_documents(f"hf:{parquet}"))


# ---------------------------------------------------------------- errors


def test_unknown_source_lists_valid_forms():
    with pytest.raises(DataError, match=r"unknown corpus source 'nope:x'.*builtin:python-docs.*file:<path>.*hf:<dataset>"):
        list(iter_documents("nope:x"))
    with pytest.raises(DataError, match=r"unknown builtin corpus.*builtin:python-code"):
        list(iter_documents("builtin:poetry"))


def test_missing_path(tmp_path):
    for spec in (f"file:{tmp_path / 'gone'}", str(tmp_path / "gone.txt")):
        with pytest.raises(DataError, match=r"does not exist; check the path"):
            list(iter_documents(spec))


def test_empty_corpus(tmp_path):
    (tmp_path / "blank.txt").write_text("  \n\n\t\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"corpus {re.escape(str(tmp_path))} is empty; "):
        list(iter_documents(str(tmp_path)))
    (tmp_path / "blank.txt").unlink()
    with pytest.raises(DataError, match=r"is empty"):
        list(iter_documents(str(tmp_path)))


def test_non_utf8_files_name_file_and_offset(tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(DataError, match=rf"{re.escape(str(latin))} is not valid UTF-8 \(byte 0xe9 at offset 3\); re-encode it as UTF-8"):
        list(iter_documents(str(latin)))
    lines = tmp_path / "rows.jsonl"
    lines.write_bytes(b'{"text": "ok"}\n' + '{"text": "é"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"rows.jsonl is not valid UTF-8 \(byte 0xe9 at offset 25\)"):
        list(iter_documents(str(lines)))


def test_bad_options_and_budget():
    with pytest.raises(DataError, match=r"\['text_field'\] do not apply to 'builtin:python-docs'"):
        list(iter_documents("builtin:python-docs", text_field="body"))
    with pytest.raises(DataError, match="max_bytes must be positive"):
        list(iter_documents("builtin:python-docs", max_bytes=0))


def test_jsonl_missing_field_and_bad_json(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"body": "a"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"x.jsonl:1 has no field 'text' \(it has \['body'\]\); pass text_field="):
        list(iter_documents(str(path)))
    path.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"x.jsonl:1 is not valid JSON"):
        list(iter_documents(str(path)))
