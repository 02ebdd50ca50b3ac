"""Compare tokenizers on the same texts: token counts, compression, vocab size, example splits.

A spec is an HF tokenizer dir (ours or any), a ``.gguf`` vocab/model file, or a Hub name. A Hub
name is loaded from the local HF cache, else downloaded only if the Hub answers within a few
seconds; otherwise (and whenever a spec fails to load) its row says ``skipped`` with the reason and
the rest of the comparison goes on. Texts default to ``samples.SAMPLES`` (kinds: english, python,
chinese, russian, arabic, hindi). Counts exclude BOS/EOS that a tokenizer would add.

``write_comparison`` writes comparison.md, comparison.json and comparison.png (chars per token by
kind, one bar per tokenizer). This module measures; it does not judge which tokenizer is better.
"""
from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tokenizers import decoders
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from shared.tokenizer.byte_level import CHAR_TO_BYTE, token_bytes
from shared.tokenizer.gguf_vocab import hf_tokenizer_from_gguf
from shared.tokenizer.hf_format import load_tokenizer
from shared.tokenizer.samples import EXAMPLES, SAMPLES

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TokenizerUnavailable(RuntimeError):
    """A spec could not be loaded (offline Hub name, missing path, unsupported file)."""


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the HF Hub answers a TCP connect (cheap; avoids transformers' long retry loop)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_hub(name: str) -> PreTrainedTokenizerFast:
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except OSError:
        pass  # not cached: try the network below
    if not _hub_reachable():
        raise TokenizerUnavailable(f"{name!r} is not a local path and not in the HF cache, and the Hub is "
                                   "unreachable; download it where online (hf download NAME) or pass a local dir")
    return AutoTokenizer.from_pretrained(name)


def load_any_tokenizer(spec: str | Path) -> PreTrainedTokenizerFast:
    """An HF fast tokenizer for a dir, a ``.gguf`` file or a Hub name (see the module docstring)."""
    path = Path(spec)
    if path.is_dir():
        return load_tokenizer(path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TokenizerUnavailable(f"GGUF file {path} not found; check the path")
        return hf_tokenizer_from_gguf(path)
    if isinstance(spec, Path) or str(spec).startswith((".", "/", "~")):
        raise TokenizerUnavailable(f"{spec} is neither a tokenizer dir nor a .gguf file; check the path")
    return _load_hub(str(spec))


def token_pieces(tokenizer: PreTrainedTokenizerFast, ids: Iterable[int]) -> list[str]:
    """Each token's own text; bytes that are not whole UTF-8 characters show as ``<0xNN>``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)  # absent on slow (Python) tokenizers
    byte_level = isinstance(getattr(backend, "decoder", None), decoders.ByteLevel)
    pieces = []
    for piece in tokenizer.convert_ids_to_tokens(list(ids)):
        byte_match = _BYTE_PIECE.fullmatch(piece)
        if byte_level and all(c in CHAR_TO_BYTE for c in piece):
            data = token_bytes(piece)
        elif byte_match:  # SentencePiece byte fallback
            data = bytes([int(byte_match[1], 16)])
        else:
            data = piece.replace("\u2581", " ").encode("utf-8")
        # Bytes that are not whole characters come back as surrogate escapes; show them as <0xNN>.
        text = data.decode("utf-8", errors="surrogateescape")
        pieces.append("".join(f"<0x{ord(c) - 0xDC00:02X}>" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text))
    return pieces


def _spec_name(spec: str | Path, taken: set[str]) -> str:
    """A short label: a GGUF file's stem, a dir's name, a Hub name as is; the full spec on a clash."""
    text, path = str(spec), Path(spec)
    name = path.stem.removeprefix("ggml-vocab-") if text.endswith(".gguf") else path.name if path.is_dir() else text
    return name if name and name not in taken else text


def _rows_for(name: str, spec: str, tokenizer: PreTrainedTokenizerFast, texts: Mapping[str, str],
              examples: Mapping[str, str]) -> list[dict[str, Any]]:
    rows = []
    for kind, text in texts.items():
        n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        n_bytes, n_chars = len(text.encode("utf-8")), len(text)
        example = examples.get(kind, "")
        rows.append({
            "tokenizer": name, "spec": spec, "status": "ok", "vocab_size": len(tokenizer), "kind": kind,
            "tokens": n_tokens, "bytes": n_bytes, "chars": n_chars,
            "tokens_per_byte": round(n_tokens / n_bytes, 4) if n_bytes else None,
            "chars_per_token": round(n_chars / n_tokens, 3) if n_tokens else None,
            "example": example,
            "example_tokens": token_pieces(tokenizer, tokenizer(example, add_special_tokens=False)["input_ids"]),
        })
    return rows


def compare_tokenizers(specs: Iterable[str | Path], texts: Mapping[str, str] | None = None,
                       examples: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per tokenizer and kind of text (``status: ok``), or one ``skipped`` row per failed spec.

    ``texts`` maps kind -> text (default: the built-in samples); ``examples`` maps kind -> the
    sentence whose split is shown (default: the built-in ones, else each text's first line).
    """
    if texts is None:
        texts = SAMPLES
        examples = EXAMPLES if examples is None else examples
    if examples is None:
        examples = {kind: (text.strip().splitlines() or [""])[0][:200] for kind, text in texts.items()}
    rows: list[dict[str, Any]] = []
    taken: set[str] = set()
    for spec in specs:
        name = _spec_name(spec, taken)
        taken.add(name)
        try:
            tokenizer = load_any_tokenizer(spec)
        except Exception as err:  # noqa: BLE001 - any load failure becomes a row naming it; the rest goes on
            rows.append({"tokenizer": name, "spec": str(spec), "status": "skipped",
                         "reason": f"{type(err).__name__}: {err}"})
            continue
        rows.extend(_rows_for(name, str(spec), tokenizer, texts, examples))
    return rows


def _grid(rows: list[dict[str, Any]]) -> tuple[list[str], list[str], dict[tuple[str, str], dict[str, Any]]]:
    """Tokenizer names and kinds in first-seen order, and the ok row for each (name, kind)."""
    ok = [r for r in rows if r["status"] == "ok"]
    names = list(dict.fromkeys(r["tokenizer"] for r in ok))
    kinds = list(dict.fromkeys(r["kind"] for r in ok))
    return names, kinds, {(r["tokenizer"], r["kind"]): r for r in ok}


def _markdown(rows: list[dict[str, Any]]) -> str:
    names, kinds, cell = _grid(rows)
    ok = list(cell.values())
    vocab = {r["tokenizer"]: r["vocab_size"] for r in ok}
    lines = ["# Tokenizer comparison", "", "Chars per token (higher means fewer tokens for the same text):", "",
             "| tokenizer | vocab | " + " | ".join(kinds) + " |", "|---|---:|" + "---:|" * len(kinds)]
    lines += [f"| {n} | {vocab[n]} | " + " | ".join(str(cell[n, k]["chars_per_token"]) for k in kinds) + " |"
              for n in names]
    lines += ["", "## All metrics", "", "| tokenizer | kind | tokens | bytes | chars | tokens/byte | chars/token |",
              "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['tokenizer']} | {r['kind']} | {r['tokens']} | {r['bytes']} | {r['chars']} | "
              f"{r['tokens_per_byte']} | {r['chars_per_token']} |" for r in ok]
    lines += ["", "## Example splits"]
    for kind in kinds:
        lines += ["", f"### {kind}", "", "```", cell[names[0], kind]["example"], "```", ""]
        lines += [f"- **{n}** ({len(cell[n, kind]['example_tokens'])} tokens): "
                  f"`{json.dumps(cell[n, kind]['example_tokens'], ensure_ascii=False)}`" for n in names]
    skipped = [r for r in rows if r["status"] != "ok"]
    if skipped:
        lines += ["", "## Skipped", ""] + [f"- **{r['tokenizer']}**: {r['reason']}" for r in skipped]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: chars/token per kind, one bar per tokenizer (Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names, kinds, cell = _grid(rows)
    fig = Figure(figsize=(min(14.0, 2.0 + len(kinds) * (0.5 + 0.3 * len(names))), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [k + (i - (len(names) - 1) / 2) * width for k in range(len(kinds))]
        ax.bar(xs, [cell[name, kind]["chars_per_token"] or 0.0 for kind in kinds], width, label=name)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylabel("chars per token (higher = better compression)")
    ax.set_title("Tokenizer comparison")
    if names:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_comparison(rows: list[dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """Write comparison.md, comparison.json and comparison.png into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"comparison.{ext}" for ext in ("md", "json", "png")}
    paths["md"].write_text(_markdown(rows), encoding="utf-8")
    paths["json"].write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _plot(rows, paths["png"])
    return paths
