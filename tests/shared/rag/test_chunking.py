"""Chunking: spans are exact slices, overlap, never start or end in whitespace, and ids are deterministic."""
from __future__ import annotations

import pytest

from shared.rag.chunking import chunk_document, chunk_id, chunk_spans

TEXT = ("Paragraph one is about lists. Lists hold items in order and can grow.\n\n"
        "Paragraph two is about dicts. Dicts map keys to values; lookups are fast.\n\n"
        "Paragraph three is about sets. Sets hold unique items and support union.\n") * 4


@pytest.mark.parametrize("size, overlap", [(80, 16), (120, 0), (50, 49), (1000, 100)])
def test_chunks_are_exact_slices_that_cover_the_text(size, overlap):
    chunks = chunk_document(TEXT, "doc", size, overlap)
    covered = set()
    for c in chunks:
        assert c.text == TEXT[c.start:c.end]
        assert 0 < len(c.text) <= size
        assert c.text == c.text.strip()
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(TEXT) if not ch.isspace())
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)


def test_consecutive_chunks_overlap_and_cut_at_boundaries():
    chunks = chunk_document(TEXT, "doc", 100, 30)
    assert len(chunks) > 5
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end, "an overlap of 30 characters must make neighbours share text"
        assert TEXT[b.start - 1].isspace(), "a chunk starts at a word, not inside one"
    # every cut but the last lands after a separator (sentence end, line or space), never mid-word
    assert all(TEXT[c.end].isspace() for c in chunks[:-1])


def test_one_long_token_is_cut_and_chunking_terminates():
    text = "x" * 250
    assert chunk_spans(text, 100, 20) == [(0, 100), (100, 200), (200, 250)]


def test_ids_are_deterministic_and_change_with_source_offsets_or_text():
    first, again = chunk_document(TEXT, "a", 100, 10), chunk_document(TEXT, "a", 100, 10)
    assert [c.chunk_id for c in first] == [c.chunk_id for c in again]
    assert len({c.chunk_id for c in first}) == len(first)
    c = first[0]
    assert chunk_id("a", c.start, c.end, c.text) == c.chunk_id
    assert chunk_id("b", c.start, c.end, c.text) != c.chunk_id
    assert chunk_id("a", c.start, c.end, c.text + "!") != c.chunk_id
    assert chunk_id("a", c.start + 1, c.end, c.text) != c.chunk_id


def test_blank_text_has_no_chunks_and_bad_sizes_raise():
    assert chunk_document(" \n\n ", "doc", 10, 2) == []
    with pytest.raises(ValueError, match="overlap < chunk_chars"):
        chunk_spans(TEXT, 10, 10)
