"""Text out of token ids as they arrive: incremental detokenization and stop-string matching.

``IncrementalDetokenizer.push(token)`` returns the text the new token completes. Byte-level BPE
tokens need not end on a character boundary (an emoji can be four one-byte tokens), so the text of
a window of recent tokens is decoded and only released once it no longer ends in U+FFFD, the
replacement character a partial UTF-8 sequence decodes to; ``flush`` releases whatever is left
at the end. The window restarts after each release, so a step decodes a few tokens, never the whole
reply. Concatenating every ``push`` and the final ``flush`` gives ``decode(all tokens)`` for
byte-level tokenizers (ours and GPT-2's), special tokens kept, without HF's optional
``clean_up_tokenization_spaces`` (ours turn it off; it would rewrite " ." as ".").

``StopStrings.feed(text)`` releases text that cannot be the start of a stop string and holds back
a tail that might be, so a streamed delta never has to be taken back; on a match it releases the
text before the earliest match and reports the stop string.

This module does not know about requests or special tokens beyond what the tokenizer decodes.
"""
from __future__ import annotations

from collections.abc import Sequence

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Text deltas of a growing token sequence (see the module docstring)."""

    def __init__(self, tokenizer):
        # The Rust tokenizer directly when there is one: HF's Python decode wrapper costs more per call.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            self._decode = lambda ids: backend.decode(ids, skip_special_tokens=False)
        else:
            self._decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)
        self._pending: list[int] = []  # tokens whose text is not released yet

    def push(self, token: int) -> str:
        self._pending.append(token)
        text = self._decode(self._pending)
        if not text or text.endswith(REPLACEMENT):
            return ""  # mid-character (or a token without text): wait for the next token
        self._pending.clear()
        return text

    def flush(self) -> str:
        """Whatever is pending, decoded as is (a cut character becomes U+FFFD)."""
        text = self._decode(self._pending) if self._pending else ""
        self._pending.clear()
        return text


class StopStrings:
    """Releases text up to (never into) the earliest stop string."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self._held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """``(text safe to release, the stop string matched or None)``; after a match, stop feeding."""
        if not self.stops:
            return text, None
        buffer = self._held + text
        hits = [(i, s) for s in self.stops if (i := buffer.find(s)) >= 0]
        if hits:
            index, stop = min(hits)
            self._held = ""
            return buffer[:index], stop
        keep = max((self._partial(buffer, s) for s in self.stops), default=0)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[:len(buffer) - keep], None

    def flush(self) -> str:
        """The held-back tail (the reply ended for another reason, so it is plain text)."""
        held, self._held = self._held, ""
        return held

    @staticmethod
    def _partial(buffer: str, stop: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of ``stop``."""
        for n in range(min(len(stop) - 1, len(buffer)), 0, -1):
            if buffer.endswith(stop[:n]):
                return n
        return 0
