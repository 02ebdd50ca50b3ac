"""Tokenizers from llama.cpp GGUF vocab files, as HF fast tokenizers.

``read_gguf_vocab(path)`` returns the ``tokenizer.ggml.*`` metadata: model (``gpt2`` = byte-level
BPE, ``llama`` = SentencePiece), pre-tokenizer name, tokens, token types, scores, merges, special
ids. ``hf_tokenizer_from_gguf(path)`` builds a ``PreTrainedTokenizerFast`` from it:

* ``gpt2`` vocabs (GPT-2, Llama-3, Qwen2): byte-level BPE over the file's merges, split first with
  the regex ``tokenizer.ggml.pre`` names (``PRE_SPLIT_PATTERNS``). Llama-3 also sets
  ``ignore_merges`` (a chunk that is itself a token is taken whole), as both llama.cpp and its HF
  tokenizer do. Control and user-defined tokens become HF added tokens, so ``<|endoftext|>``
  encodes as one id. Approximations: the regexes run in Oniguruma where llama.cpp has its own
  Unicode splitter, so code points whose categories differ between the two may split differently;
  Qwen2's HF tokenizer NFC-normalizes first, llama.cpp (and we) do not.
* ``llama`` vocabs (Llama-2, SentencePiece BPE): HF BPE with byte fallback, whose merges are every
  split of a normal token into two tokens, ranked by the merged token's score (highest first);
  text gets "▁" for spaces and a leading "▁". That is SentencePiece's rule (merge the adjacent pair
  whose result scores highest, leftmost on ties), except where two different splits of the same
  token overlap in one word, where SentencePiece takes the leftmost and HF the earlier rank.
  Control tokens (``<s>``) are only matched as added tokens, never assembled from characters.
  A BOS is added when ``tokenizer.ggml.add_bos_token`` says so (absent: for SentencePiece and
  Llama-3 vocabs), as llama.cpp does.

The metadata is parsed here with the ``gguf`` package's type tables and constants rather than by
``gguf.GGUFReader``, which builds one numpy view per string and takes ~10 s on a Llama-3 vocab
(this takes ~0.5 s); a test checks both read the same values. Tensors are never read.
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUF_MAGIC, GGUFReader, GGUFValueType, Keys, TokenType
from gguf.gguf_reader import READER_SUPPORTED_VERSIONS
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from shared.tokenizer.byte_level import GPT2_SPLIT_PATTERN, LLAMA3_SPLIT_PATTERN, QWEN2_SPLIT_PATTERN

LLAMA3_PRE = ("llama-bpe", "llama3", "llama-v3")  # names llama.cpp gives the Llama-3 pre-tokenizer
PRE_SPLIT_PATTERNS = {"gpt-2": GPT2_SPLIT_PATTERN, "qwen2": QWEN2_SPLIT_PATTERN,
                      **{name: LLAMA3_SPLIT_PATTERN for name in LLAMA3_PRE}}
SPM_SPACE = "\u2581"  # "▁", SentencePiece's visible space


class GGUFError(ValueError):
    """A file is not a GGUF vocab we can read; the message names the fix."""


class _Cursor:
    """Little-endian reads over a mapped GGUF file, turning overruns into GGUFError."""

    def __init__(self, buf: mmap.mmap, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def unpack(self, fmt: str) -> Any:
        try:
            (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        except struct.error:
            raise GGUFError(f"{self.path} ends mid-header (truncated or corrupt GGUF); re-download or "
                            "re-convert the file") from None
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        size = self.unpack("<Q")
        raw = self.buf[self.pos:self.pos + size]
        if len(raw) != size:
            raise GGUFError(f"{self.path}: string runs past the end of the file (truncated GGUF); re-download it")
        self.pos += size
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"{self.path}: metadata string at byte {self.pos - size} is not UTF-8 "
                            "(corrupt GGUF); re-download or re-convert the file") from None

    def value_type(self) -> GGUFValueType:
        raw = self.unpack("<I")
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise GGUFError(f"{self.path}: unknown GGUF value type {raw} (corrupt file, or newer than this "
                            "gguf package; upgrade gguf)") from None

    def numbers(self, vtype: GGUFValueType, count: int) -> list:
        dtype = np.dtype(GGUFReader.gguf_scalar_to_np[vtype]).newbyteorder("<")
        end = self.pos + count * dtype.itemsize
        if end > len(self.buf):
            raise GGUFError(f"{self.path}: values run past the end of the file (truncated GGUF); re-download it")
        values = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).tolist()
        self.pos = end
        return values

    def value(self, vtype: GGUFValueType) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype != GGUFValueType.ARRAY:
            return self.numbers(vtype, 1)[0]
        item_type, count = self.value_type(), self.unpack("<Q")
        if item_type in GGUFReader.gguf_scalar_to_np:  # numbers: one numpy read for the whole array
            return self.numbers(item_type, count)
        return [self.value(item_type) for _ in range(count)]


def read_gguf_metadata(path: str | Path) -> dict[str, Any]:
    """All key/value metadata of a little-endian GGUF file (numbers, strings, lists)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} not found; pass the path of a .gguf vocab or model file")
    with path.open("rb") as handle:
        if path.stat().st_size < 24:
            raise GGUFError(f"{path} is too small to be a GGUF file; pass a .gguf vocab or model file")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cursor = _Cursor(buf, path)
            if cursor.unpack("<I") != GGUF_MAGIC:
                raise GGUFError(f"{path} is not a GGUF file (bad magic); pass a llama.cpp .gguf file")
            version = cursor.unpack("<I")
            if version not in READER_SUPPORTED_VERSIONS:
                raise GGUFError(f"{path}: GGUF version {version} is not supported (big-endian or newer file); "
                                f"supported versions: {READER_SUPPORTED_VERSIONS}")
            cursor.unpack("<Q")  # tensor count: tensors are never read here
            n_kv = cursor.unpack("<Q")
            metadata = {}
            for _ in range(n_kv):
                key = cursor.string()
                metadata[key] = cursor.value(cursor.value_type())
            return metadata


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer part of a GGUF file (``tokenizer.ggml.*``)."""

    path: str
    model: str                      # "gpt2" (byte-level BPE) | "llama" (SentencePiece) | ...
    pre: str | None                 # which pre-tokenizer split a "gpt2" vocab expects
    tokens: list[str]
    token_types: list[int]          # gguf.TokenType values
    scores: list[float] | None      # SentencePiece scores ("llama")
    merges: list[str] | None        # "left right" pairs, rank order ("gpt2")
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = False
    add_space_prefix: bool = True
    chat_template: str | None = None


def read_gguf_vocab(path: str | Path) -> GGUFVocab:
    """The vocab in a GGUF file; GGUFError when the file holds no tokenizer."""
    meta = read_gguf_metadata(path)
    tok = Keys.Tokenizer
    if tok.MODEL not in meta or tok.LIST not in meta:
        raise GGUFError(f"{path} holds no tokenizer ({tok.MODEL} / {tok.LIST} missing); pass a GGUF vocab "
                        "or model file converted with its tokenizer")
    n = len(meta[tok.LIST])
    return GGUFVocab(
        path=str(path), model=meta[tok.MODEL], pre=meta.get(tok.PRE), tokens=meta[tok.LIST],
        token_types=meta.get(tok.TOKEN_TYPE) or [int(TokenType.NORMAL)] * n,
        scores=meta.get(tok.SCORES), merges=meta.get(tok.MERGES),
        bos_id=meta.get(tok.BOS_ID), eos_id=meta.get(tok.EOS_ID), unk_id=meta.get(tok.UNK_ID),
        pad_id=meta.get(tok.PAD_ID),
        # llama.cpp's defaults when the keys are absent: SentencePiece and Llama-3 add BOS.
        add_bos=bool(meta.get(tok.ADD_BOS, meta[tok.MODEL] == "llama" or meta.get(tok.PRE) in LLAMA3_PRE)),
        add_space_prefix=bool(meta.get(tok.ADD_PREFIX, True)),
        chat_template=meta.get(tok.CHAT_TEMPLATE))


def _added_tokens(vocab: GGUFVocab) -> list[AddedToken]:
    """Control tokens as special added tokens, user-defined ones as plain added tokens."""
    kinds = {int(TokenType.CONTROL): True, int(TokenType.USER_DEFINED): False}
    return [AddedToken(vocab.tokens[i], special=kinds[t], normalized=False)
            for i, t in enumerate(vocab.token_types) if t in kinds]


def _token_ids(vocab: GGUFVocab) -> dict[str, int]:
    ids = {token: i for i, token in enumerate(vocab.tokens)}
    if len(ids) != len(vocab.tokens):  # an HF vocab maps each string to one id; a repeat would lose ids
        raise GGUFError(f"{vocab.path}: the token list repeats {len(vocab.tokens) - len(ids)} token(s), which an "
                        "HF tokenizer cannot represent; use llama.cpp's own tokenizer for this file")
    return ids


def _byte_level_bpe(vocab: GGUFVocab) -> Tokenizer:
    """A "gpt2" GGUF vocab as byte-level BPE with its pre-tokenizer's split regex."""
    if vocab.pre not in PRE_SPLIT_PATTERNS:
        raise GGUFError(f"{vocab.path}: pre-tokenizer {vocab.pre!r} is not supported; supported: "
                        f"{', '.join(PRE_SPLIT_PATTERNS)} (add its split regex to PRE_SPLIT_PATTERNS)")
    if vocab.merges is None:
        raise GGUFError(f"{vocab.path}: BPE vocab without {Keys.Tokenizer.MERGES}; re-convert the GGUF with merges")
    ids = _token_ids(vocab)
    merges = [tuple(merge.split(" ", 1)) for merge in vocab.merges]
    tokenizer = Tokenizer(models.BPE(vocab=ids, merges=merges, ignore_merges=vocab.pre in LLAMA3_PRE))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRE_SPLIT_PATTERNS[vocab.pre]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _spm_merges(vocab: GGUFVocab) -> list[tuple[str, str]]:
    """Every split of a normal/user-defined token into two tokens, highest merged score first."""
    mergeable = {int(TokenType.NORMAL), int(TokenType.USER_DEFINED)}
    ids = {token: i for i, token in enumerate(vocab.tokens) if vocab.token_types[i] in mergeable}
    ranked = []
    for token, i in ids.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ids and right in ids:
                ranked.append((-vocab.scores[i], i, ids[left], ids[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _sentencepiece_bpe(vocab: GGUFVocab) -> Tokenizer:
    """A "llama" GGUF vocab as HF BPE with byte fallback (see the module docstring)."""
    if vocab.scores is None:
        raise GGUFError(f"{vocab.path}: SentencePiece vocab without {Keys.Tokenizer.SCORES}; re-convert the GGUF")
    unk = vocab.tokens[vocab.unk_id] if vocab.unk_id is not None else None
    ids = _token_ids(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=ids, merges=_spm_merges(vocab), unk_token=unk,
                                     byte_fallback=True, fuse_unk=True))
    steps = [normalizers.Prepend(SPM_SPACE)] if vocab.add_space_prefix else []
    tokenizer.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", SPM_SPACE)])
    strip = [decoders.Strip(content=" ", left=1, right=0)] if vocab.add_space_prefix else []
    tokenizer.decoder = decoders.Sequence([decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(),
                                           decoders.Fuse(), *strip])
    return tokenizer


def _token_or_none(vocab: GGUFVocab, token_id: int | None) -> str | None:
    return vocab.tokens[token_id] if token_id is not None and 0 <= token_id < len(vocab.tokens) else None


def hf_tokenizer_from_gguf(path: str | Path) -> PreTrainedTokenizerFast:
    """A transformers fast tokenizer for the vocab in GGUF file ``path`` (see the module docstring)."""
    vocab = read_gguf_vocab(path)
    builders = {"gpt2": _byte_level_bpe, "llama": _sentencepiece_bpe}
    if vocab.model not in builders:
        raise GGUFError(f"{path}: tokenizer model {vocab.model!r} is not supported; supported: "
                        f"{', '.join(builders)} (gpt2 = byte-level BPE, llama = SentencePiece BPE)")
    tokenizer = builders[vocab.model](vocab)
    tokenizer.add_tokens(_added_tokens(vocab))
    bos = _token_or_none(vocab, vocab.bos_id)
    if vocab.add_bos and bos is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab.bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos, eos_token=_token_or_none(vocab, vocab.eos_id),
        unk_token=_token_or_none(vocab, vocab.unk_id), pad_token=_token_or_none(vocab, vocab.pad_id),
        chat_template=vocab.chat_template, clean_up_tokenization_spaces=False)
