"""Shared fixtures: a small mixed corpus, a trained tokenizer dir, and the GGUF vocab files."""
from __future__ import annotations

from pathlib import Path

import pytest

from shared.tokenizer import SAMPLES, train_tokenizer

DATA = Path(__file__).resolve().parents[4] / "shared" / "data"
SHAKESPEARE = DATA / "corpora" / "tinyshakespeare.txt"
GGUF_DIR = DATA / "tokenizers"


@pytest.fixture(scope="session")
def shakespeare_20k() -> str:
    """The first 20 KB of tinyshakespeare, or skip the test when the file is absent."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} not present")
    return SHAKESPEARE.read_text(encoding="utf-8")[:20_000]


def _gguf_path(name: str) -> Path:
    path = GGUF_DIR / f"ggml-vocab-{name}.gguf"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def gguf_file():
    """``gguf_file(name)``: ``ggml-vocab-<name>.gguf`` from the shared data dir; skips when absent."""
    return _gguf_path


@pytest.fixture(scope="session")
def present_gguf_files() -> list[Path]:
    """The llama.cpp vocab files that are present (GPT-2, Llama-3, Llama-2 SPM, Qwen2)."""
    return [p for name in ("gpt-2", "llama-bpe", "llama-spm", "qwen2") if (p := GGUF_DIR / f"ggml-vocab-{name}.gguf").is_file()]


@pytest.fixture(scope="session")
def mixed_corpus() -> list[str]:
    """A few KB of English, Python and non-Latin text (always available: the built-in samples)."""
    extra = ("Tokenizers see   runs of spaces,\ttabs and\nnewlines; numbers like 3.14159 and 2024-06-01; "
             "emoji 😀🎉 and accents: café, naïve, Zoë.\n")
    return list(SAMPLES.values()) + [extra * 3]


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory, mixed_corpus) -> Path:
    """Our tokenizer (600 ids) trained on the mixed corpus and saved as an HF dir."""
    out = tmp_path_factory.mktemp("tok") / "ours"
    train_tokenizer(mixed_corpus, vocab_size=600, out_dir=out)
    return out
