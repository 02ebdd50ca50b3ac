"""Our own readable byte-level BPE tokenizer (minbpe-style): train, encode, decode, save, load.

Text is split with a regex (GPT-2's by default) into chunks; each chunk's UTF-8 bytes are merged
pair by pair. The id layout is the canonical one every tokenizer of ours uses: ids 0..255 are the
raw bytes in byte order, 256.. the tokens made by the merges in the order they were first made,
then the special tokens in ``SPECIAL_TOKENS`` order.

Training counts pairs over the unique chunks weighted by how often each occurs, and after a merge
only recounts the chunks that contained the merged pair, so ~100 KB trains in seconds. Which pair
wins is the deterministic rule of the HF ``tokenizers`` BPE trainer, so both trainers learn the
same merges (``fast.py`` is the quick path; the tests check they agree):

1. the pair with the highest count wins;
2. a tie goes to the smallest pair ``(rank(a), rank(b))``, where ``rank`` is HF's internal id: a
   byte's position in the code-point order of its GPT-2 byte-level char (``HF_BYTE_RANK``), and a
   merged token's own id (256 + creation order, which is HF's id for it too);
3. a merge whose result already exists (``"a"+"bc"`` after ``"ab"+"c"``) is recorded as a merge
   but reuses the existing token's id instead of adding one; training stops when the vocabulary
   (not the merge list) is full, or no pair occurs any more.

Residual difference: none seen. Rule 3 mirrors HF's code; we never saw it fire when training
from scratch (a token's split does not depend on its neighbours, so the same bytes come from the
same merge), and 2000 fuzzed corpora plus real text gave identical lists. If it ever fired, HF's
bookkeeping could part from ours: it never recounts the pair it just merged, and it applies a
re-queued pair only to the words where that pair was newly formed.

Encoding applies, in each chunk, the earliest-learned merge at its leftmost position, one at a
time, until none applies: exactly what HF's BPE model does, so both encode to the same ids.
This module does not pretend to be fast: use the HF tokenizer (``hf_format.py``) for real data.
"""
from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import regex

from shared.tokenizer.byte_level import GPT2_SPLIT_PATTERN, HF_BYTE_RANK
from shared.chat_format import SPECIAL_TOKENS

FORMAT = "gpt-journey-bpe"
Pair = tuple[int, int]


class TokenTable:
    """The canonical id -> bytes table (no specials): the 256 bytes, then each new merged token."""

    def __init__(self) -> None:
        self.tokens = [bytes([b]) for b in range(256)]
        self.id_of = {tok: i for i, tok in enumerate(self.tokens)}

    def add_merge(self, a: int, b: int) -> int:
        """Id of ``a`` + ``b``, new unless those bytes are already a token (rule 3)."""
        if not (0 <= a < len(self.tokens) and 0 <= b < len(self.tokens)):
            raise ValueError(f"merge ({a}, {b}) uses an id not defined before it; "
                             "merges must be listed in the order they were learned")
        merged = self.tokens[a] + self.tokens[b]
        if merged not in self.id_of:
            self.id_of[merged] = len(self.tokens)
            self.tokens.append(merged)
        return self.id_of[merged]


def build_vocab(merges: Sequence[Pair]) -> tuple[list[bytes], dict[Pair, tuple[int, int]]]:
    """The id -> bytes table (without specials) and ``pair -> (rank, result id)`` for ``merges``."""
    table = TokenTable()
    ranks: dict[Pair, tuple[int, int]] = {}
    for rank, (a, b) in enumerate(merges):
        ranks.setdefault((a, b), (rank, table.add_merge(a, b)))
    return table.tokens, ranks


def _merge_word(word: list[int], pair: Pair, new_id: int) -> list[int]:
    """``word`` with every non-overlapping occurrence of ``pair``, left to right, replaced."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def _rank(token_id: int) -> int:
    """HF trainer's internal id of one of our ids (see rule 2 in the module docstring)."""
    return HF_BYTE_RANK[token_id] if token_id < 256 else token_id


class _PairCounts:
    """Exact pair counts over weighted words, and a lazy max-heap to pick the next merge."""

    def __init__(self, words: list[list[int]], freqs: list[int]):
        self.words, self.freqs = words, freqs
        self.counts: Counter[Pair] = Counter()
        self.where: defaultdict[Pair, set[int]] = defaultdict(set)  # may list stale words; checked on use
        for i in range(len(words)):
            self._count_word(i, +1)
        self.heap = [(-c, _rank(p[0]), _rank(p[1]), p) for p, c in self.counts.items()]
        heapq.heapify(self.heap)

    def _count_word(self, i: int, sign: int) -> None:
        word, freq = self.words[i], self.freqs[i]
        for pair in zip(word, word[1:]):
            self.counts[pair] += sign * freq
            if sign > 0:
                self.where[pair].add(i)
            elif self.counts[pair] == 0:
                del self.counts[pair]

    def _push(self, pair: Pair) -> None:
        heapq.heappush(self.heap, (-self.counts[pair], _rank(pair[0]), _rank(pair[1]), pair))

    def pop_best(self) -> Pair | None:
        """The most frequent pair (ties: smallest ranks), or None when no pair is left."""
        while self.heap:
            neg_count, _, _, pair = heapq.heappop(self.heap)
            current = self.counts.get(pair, 0)
            if current <= 0:
                continue
            if current != -neg_count:  # stale entry: counts fell since it was pushed
                self._push(pair)
                continue
            return pair
        return None

    def merge(self, pair: Pair, new_id: int) -> None:
        """Apply ``pair -> new_id`` in every word holding it, recounting only those words."""
        for i in self.where.pop(pair, ()):
            word = self.words[i]
            if not any(p == pair for p in zip(word, word[1:])):
                continue
            self._count_word(i, -1)
            self.words[i] = _merge_word(word, pair, new_id)
            self._count_word(i, +1)
            # Only pairs holding new_id can have grown; they need a fresh heap entry.
            for p in zip(self.words[i], self.words[i][1:]):
                if new_id in p:
                    self._push(p)


def learn_merges(chunk_counts: Mapping[bytes, int], n_new_tokens: int) -> list[Pair]:
    """Merges (canonical ids) that add up to ``n_new_tokens`` tokens to the 256 bytes."""
    stats = _PairCounts([list(chunk) for chunk in chunk_counts], list(chunk_counts.values()))
    table = TokenTable()
    merges: list[Pair] = []
    while len(table.tokens) - 256 < n_new_tokens:
        pair = stats.pop_best()
        if pair is None:
            break
        merges.append(pair)
        stats.merge(pair, table.add_merge(*pair))
    return merges


class BPETokenizer:
    """A byte-level BPE tokenizer in the canonical id layout (see the module docstring)."""

    def __init__(self, merges: Sequence[Pair] = (), special_tokens: Sequence[str] = SPECIAL_TOKENS,
                 pattern: str = GPT2_SPLIT_PATTERN):
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.special_tokens = tuple(special_tokens)
        self.pattern = pattern
        self._split = regex.compile(pattern)
        self.vocab, self._ranks = build_vocab(self.merges)
        self.special_ids = {tok: len(self.vocab) + i for i, tok in enumerate(self.special_tokens)}
        # Longest first, so a special that is a prefix of another never wins over it.
        by_length = sorted(self.special_tokens, key=len, reverse=True)
        self._special_split = (regex.compile("(" + "|".join(regex.escape(t) for t in by_length) + ")")
                               if by_length else None)
        self._chunk_cache: dict[bytes, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + len(self.special_tokens)

    @classmethod
    def train(cls, texts: str | Iterable[str], vocab_size: int, special_tokens: Sequence[str] = SPECIAL_TOKENS,
              pattern: str = GPT2_SPLIT_PATTERN) -> BPETokenizer:
        """Learn merges until ``vocab_size`` (bytes + merged tokens + specials) or no pair is left."""
        n_new = vocab_size - 256 - len(special_tokens)
        if n_new < 0:
            raise ValueError(f"vocab_size {vocab_size} is below the {256 + len(special_tokens)} ids that bytes and "
                             "special tokens need; raise vocab_size")
        split = regex.compile(pattern)
        chunk_counts: Counter[bytes] = Counter()
        for text in [texts] if isinstance(texts, str) else texts:
            chunk_counts.update(chunk.encode("utf-8") for chunk in split.findall(text))
        return cls(learn_merges(chunk_counts, n_new), special_tokens, pattern)

    def _encode_chunk(self, chunk: bytes) -> list[int]:
        cached = self._chunk_cache.get(chunk)
        if cached is not None:
            return cached
        ids = list(chunk)
        while len(ids) > 1:
            found = [(self._ranks[p][0], i) for i, p in enumerate(zip(ids, ids[1:])) if p in self._ranks]
            if not found:
                break
            _, i = min(found)  # earliest-learned merge, leftmost occurrence
            ids[i:i + 2] = [self._ranks[(ids[i], ids[i + 1])][1]]
        if len(self._chunk_cache) < 100_000:  # bounded: a cache, not a copy of the corpus
            self._chunk_cache[chunk] = ids
        return ids

    def _encode_ordinary(self, text: str, errors: str) -> list[int]:
        ids: list[int] = []
        for chunk in self._split.findall(text):
            ids.extend(self._encode_chunk(chunk.encode("utf-8", errors=errors)))
        return ids

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """Token ids of ``text``; with ``allow_special`` a special token's text becomes its one id."""
        try:
            if not (allow_special and self._special_split):
                return self._encode_ordinary(text, "strict")
            ids: list[int] = []
            for part in self._special_split.split(text):
                special = self.special_ids.get(part)
                ids.extend([special] if special is not None else self._encode_ordinary(part, "strict"))
            return ids
        except UnicodeEncodeError as err:
            raise ValueError(f"text holds a lone surrogate at {err.start} and has no UTF-8 bytes; "
                             "pass raw data through encode_bytes instead") from None

    def encode_bytes(self, data: bytes) -> list[int]:
        """Token ids of arbitrary bytes; valid UTF-8 encodes exactly as ``encode`` (specials not parsed).

        Invalid bytes pass through the split as surrogate escapes, so they land in punctuation-like
        chunks and come back out as the same bytes.
        """
        return self._encode_ordinary(data.decode("utf-8", errors="surrogateescape"), "surrogateescape")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        specials = {i: tok.encode("utf-8") for tok, i in self.special_ids.items()}
        out = bytearray()
        for i in ids:
            if 0 <= i < len(self.vocab):
                out += self.vocab[i]
            elif i in specials:
                out += specials[i]
            else:
                raise ValueError(f"token id {i} is outside this tokenizer's vocabulary of {self.vocab_size}")
        return bytes(out)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; byte sequences that are not UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer as one small JSON file (merges as id pairs) and return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"format": FORMAT, "version": 1, "pattern": self.pattern,
                 "special_tokens": list(self.special_tokens), "merges": [list(m) for m in self.merges]}
        path.write_text(json.dumps(state), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a file written by ``save``."""
        try:
            state = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read BPE tokenizer file {path}: {err}; pass a file written by "
                             "BPETokenizer.save") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} file; pass a file written by BPETokenizer.save "
                             "(an HF tokenizer dir loads with load_tokenizer)")
        return cls(state["merges"], state["special_tokens"], state["pattern"])
