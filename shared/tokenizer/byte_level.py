"""Byte-level BPE plumbing shared by every tokenizer module: split regexes and the byte<->char map.

GPT-2 style vocabularies (ours, GPT-2, Llama-3, Qwen2) store each token's bytes as a printable
string: byte ``b`` becomes ``BYTE_TO_CHAR[b]`` (printable bytes map to themselves, the rest to
code points from U+0100 up, in byte order). ``token_str``/``token_bytes`` convert between the two.

``HF_BYTE_RANK`` is the position of each byte in the HF ``tokenizers`` BPE trainer's internal
alphabet, which sorts the 256 mapped chars by code point: the trainer breaks count ties by these
ids, so our reference trainer uses them to reproduce its merges exactly.

This module holds no tokenizer; it is the vocabulary of facts the others share.
"""
from __future__ import annotations

# GPT-2's pre-tokenizer split (also what HF ByteLevel(use_regex=True) applies).
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Llama-3 (tiktoken cl100k style): case-insensitive contractions, digits in groups of up to three,
# a letter run may take one leading non-letter, newlines kept together.
LLAMA3_SPLIT_PATTERN = (r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"""
                        r"""|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                        r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
# Qwen2: the Llama-3 split except that every digit is its own piece.
QWEN2_SPLIT_PATTERN = LLAMA3_SPLIT_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")


def _byte_to_char() -> dict[int, str]:
    """GPT-2's reversible byte -> printable char map (see the module docstring)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


BYTE_TO_CHAR: dict[int, str] = _byte_to_char()
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in BYTE_TO_CHAR.items()}
HF_BYTE_RANK: dict[int, int] = {
    b: rank for rank, b in enumerate(sorted(range(256), key=lambda b: ord(BYTE_TO_CHAR[b])))}


def token_str(data: bytes) -> str:
    """A token's bytes as its byte-level vocabulary string (``b" the"`` -> ``"Ġthe"``)."""
    return "".join(BYTE_TO_CHAR[b] for b in data)


def token_bytes(text: str) -> bytes:
    """Inverse of ``token_str``; ValueError when ``text`` is not a byte-level token string."""
    try:
        return bytes(CHAR_TO_BYTE[c] for c in text)
    except KeyError as err:
        raise ValueError(f"{text!r} is not a byte-level token string (char {err.args[0]!r} maps to no byte); "
                         "only GPT-2 style byte-level vocabularies can be converted") from None
