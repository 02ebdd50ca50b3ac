"""Is a stage's data there, and does it hold the fields the stage reads? Checked before anything runs.

Forms (the same ones the loaders take, ``shared.data.sources`` and ``shared.data.instructions.loaders``):

- ``builtin:...``: generated or read from the running Python; always there.
- a local file or directory (``file:<path>``, a plain path, or ``hf:<local path>``): it must exist,
  and a ``.jsonl`` file's first row (a ``.parquet`` file's schema) must have the field the stage
  reads: ``text_field`` for a corpus, our SFT or preference schema for chat data.
- ``hf:<dataset>[:<config>]``: a hub dataset, reachable only online. ``hub_status`` asks the hub
  for its info with a short timeout, all names at once, and answers "offline" without a request
  when ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` is set. Its fields are checked when it streams.

Each check returns a ``DataCheck``; one that would stop the stage carries the problem and the fix,
the fix naming the ``journey`` override to use (``key``, e.g. ``pretrain.data.source``).
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from shared.data.instructions.hub_formats import FORMATS
from shared.data.instructions.loaders import split_local_copy
from shared.data.instructions.schema import PREFERENCE_FIELDS, SFT_FIELDS
from shared.data.local import SUFFIXES, TEXT_SUFFIXES, find_files
from shared.data.sources import BUILTINS, VALID_FORMS

BUILTIN_INSTRUCTIONS = "builtin:instructions"
HUB_TIMEOUT_S = 3.0
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass
class DataCheck:
    """One data source of a stage: what it is (``detail``), its size when known, and the problem if any."""

    source: str
    detail: str
    size_bytes: Optional[int] = None
    problem: Optional[str] = None
    fix: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def offline_reason() -> Optional[str]:
    """Why hub requests are off (an env var set to a true value), or None."""
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var}={os.environ[var]}"
    return None


def _ask_hub(name: str, timeout: float) -> tuple[bool, str]:
    try:
        from huggingface_hub import HfApi  # deferred: only a plan with hub data pays for it
        HfApi().dataset_info(name, timeout=timeout)
        return True, "reachable on the hub"
    except Exception as exc:  # no network, DNS, a timeout, a gated or missing repo: all mean "not from here"
        first = str(exc).splitlines()[0][:90] if str(exc) else ""
        return False, f"not reachable from here ({type(exc).__name__}: {first})"


def hub_tokenizer(name: str, timeout: float = HUB_TIMEOUT_S) -> tuple[bool, str]:
    """Whether tokenizer ``name`` (a hub model id such as ``gpt2``) can be loaded here: in the local
    hub cache, or the hub answers for it."""
    try:
        from huggingface_hub import try_to_load_from_cache  # deferred, as in _ask_hub
        if isinstance(try_to_load_from_cache(name, "tokenizer.json"), str):
            return True, "in the local hub cache"
    except Exception:  # a malformed repo id: the hub request below says so
        pass
    reason = offline_reason()
    if reason:
        return False, f"not cached, and offline ({reason})"
    try:
        from huggingface_hub import HfApi
        HfApi().model_info(name, timeout=timeout)
        return True, "reachable on the hub"
    except Exception as exc:  # see _ask_hub
        return False, f"not cached and not reachable from here ({type(exc).__name__})"


def hub_status(names: list[str], timeout: float = HUB_TIMEOUT_S) -> dict[str, tuple[bool, str]]:
    """``{dataset: (reachable, why)}`` for hub dataset names, asked in parallel (at most ``timeout`` s each)."""
    names = sorted(set(names))
    reason = offline_reason()
    if reason:
        return {n: (False, f"offline ({reason})") for n in names}
    if not names:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
        return dict(zip(names, pool.map(lambda n: _ask_hub(n, timeout), names)))


def hub_name(source: str) -> Optional[str]:
    """The hub dataset an ``hf:`` source streams from (``org/name``); None for a local path, a local copy
    (``hf:<dataset>@<path>``) or any other source."""
    prefix, sep, rest = source.partition(":")
    if not (sep and prefix == "hf") or Path(rest).exists() or split_local_copy(rest)[1] is not None:
        return None
    return rest.partition(":")[0] or None


def local_path(source: str) -> Optional[Path]:
    """The path of a local source (``file:``, ``hf:<existing path>``, a plain path or a known suffix), else None."""
    prefix, sep, rest = source.partition(":")
    if sep and prefix == "file":
        return Path(rest)
    if sep and prefix == "hf":
        return Path(rest) if Path(rest).exists() else None
    if sep and prefix == "builtin":
        return None
    path = Path(source)
    return path if path.exists() or path.suffix.lower() in SUFFIXES else None


def first_row_fields(path: Path) -> Optional[list[str]]:
    """Field names of the first row of a ``.jsonl`` file or the schema of a ``.parquet`` file (None for text).

    ValueError when the first non-blank line is not a JSON object.
    """
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError(f"{path}:{number} is a JSON {type(row).__name__}, not an object")
                    return sorted(row)
        return []
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # deferred: only a parquet source needs it
        return list(pq.ParquetFile(path).schema_arrow.names)
    return None


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in find_files(path, SUFFIXES))
    return path.stat().st_size


def _local(source: str, path: Path, need: tuple[str, ...], key: str, what: str, fix_fields: str) -> DataCheck:
    """A local file or directory: it exists, and its first data file has every field of ``need``."""
    if not path.exists():
        return DataCheck(source, "local path", problem=f"{path} does not exist",
                         fix=f"check the path (relative paths are from {Path.cwd()}) or set {key}=<existing file>")
    size = _size(path)
    files = [path] if path.is_file() else find_files(path, SUFFIXES)
    if not files:
        return DataCheck(source, "local directory", 0, problem=f"{path} holds no {'/'.join(SUFFIXES)} file",
                         fix=f"put the data there or set {key}=<a file>")
    try:
        fields = first_row_fields(files[0])
    except (ValueError, OSError) as exc:
        return DataCheck(source, "local file", size, problem=f"{files[0]} cannot be read: {exc}",
                         fix=f"fix the file or set {key}=<another file>")
    if fields is not None and need:
        missing = [f for f in need if f not in fields]
        if missing:
            return DataCheck(source, "local file", size,
                             problem=f"{files[0]}'s first row has no field {missing[0]!r} (it has {fields}); "
                                     f"{what} reads {list(need)}",
                             fix=fix_fields)
    return DataCheck(source, f"local {'directory' if path.is_dir() else 'file'}", size)


def _hub(source: str, name: str, hub: dict[str, tuple[bool, str]], key: str, local_copy: str) -> DataCheck:
    """A hub dataset: fine when reachable, else a problem whose fix is ``local_copy`` (how to use a copy)."""
    reachable, why = hub.get(name, (False, "not checked"))
    if reachable:
        return DataCheck(source, f"hub dataset, {why}")
    return DataCheck(source, "hub dataset", problem=f"hub dataset {name} is {why}",
                     fix=f"run where the hub is reachable, or {local_copy}")


def check_corpus(source: str, text_field: str, key: str, hub: dict[str, tuple[bool, str]],
                 text_field_key: Optional[str] = None) -> DataCheck:
    """A text corpus (pretraining, the tokenizer, the retrieval index): ``text_field`` must be in its rows.

    ``key`` is the override naming the source (``pretrain.data.source``); ``text_field_key`` the one
    naming the field (``pretrain.data.text_field``), suggested when the file has another field.
    """
    prefix, sep, rest = source.partition(":")
    if sep and prefix == "builtin":
        if rest in BUILTINS:
            return DataCheck(source, "builtin corpus (the running Python)")
        return DataCheck(source, "builtin", problem=f"unknown builtin corpus {source!r}",
                         fix=f"set {key} to one of {[f'builtin:{n}' for n in BUILTINS]}")
    name = hub_name(source)
    if name:
        return _hub(source, name, hub, key, f"save a copy there and point {key}=file:/path/copy.jsonl (one JSON "
                                            f"object per line with a {text_field!r} field)")
    path = local_path(source)
    if path is None:
        return DataCheck(source, "unknown", problem=f"unknown corpus source {source!r}",
                         fix=f"set {key} to one of: {', '.join(VALID_FORMS)}")
    fix = (f"set {text_field_key}=<the field holding the text>" if text_field_key else
           f"write the text under {text_field!r}") + f", or point {key} at a file whose rows have {text_field!r}"
    return _local(source, path, (text_field,), key, f"the corpus (text_field={text_field})", fix)


def is_text_corpus(source: str) -> bool:
    """A pretraining-style corpus where post-training expects chat data (the rule of ``shared.training.sft``)."""
    if source in [f"builtin:{n}" for n in BUILTINS]:
        return True
    path = Path(source.removeprefix("file:"))
    return path.suffix in TEXT_SUFFIXES or path.is_dir()


def check_examples(source: str, kind: str, key: str, hub: dict[str, tuple[bool, str]]) -> DataCheck:
    """Post-training data of ``kind`` ``sft`` (chat examples, or a text corpus) or ``preference`` (pairs).

    Artifact names (``prefs``) are the caller's to resolve; this checks dataset forms only.
    """
    fields = SFT_FIELDS if kind == "sft" else PREFERENCE_FIELDS
    noun = "SFT examples" if kind == "sft" else "preference pairs"
    supported = [f"hf:{n}" for n, f in FORMATS.items() if f.kind == kind]
    if source == BUILTIN_INSTRUCTIONS:
        if kind == "sft":
            return DataCheck(source, "builtin instructions (generated)")
        return DataCheck(source, "builtin", problem=f"{source} has no preference pairs",
                         fix=f"sample them with the prefs stage ({key}=prefs) or use one of {supported}")
    if is_text_corpus(source):
        if kind == "sft":
            check = check_corpus(source, "text", key, hub)
            check.detail = f"text corpus ({check.detail}): every token trains"
            return check
        return DataCheck(source, "text corpus", problem=f"{source} is a text corpus, not {noun}",
                         fix=f"set {key}=prefs (this run's pairs) or one of {supported}")
    prefix, sep, rest = source.partition(":")
    name, copy = split_local_copy(rest) if sep and prefix == "hf" else (None, None)
    if copy is not None or hub_name(source):
        name = name if copy is not None else hub_name(source)
        fmt = FORMATS.get(name)
        if fmt is None or fmt.kind != kind:
            return DataCheck(source, "hub dataset", problem=f"no converter from {name} to {noun}",
                             fix=f"set {key} to one of {supported}, or convert the data to a .jsonl of {list(fields)}")
        if copy is not None:  # read through the dataset's own converter (shared.data.instructions), in its schema
            return _local(source, Path(copy), fmt.fields, key, f"the {name} converter",
                          f"give a copy of {name} in its own schema ({', '.join(fmt.fields)})")
        return _hub(source, name, hub, key, f"download a copy there (the dataset's own jsonl/parquet files) and set "
                                            f"{key}=hf:{name}@/path/to/copy")
    path = local_path(source)
    if path is None or (path.is_file() and path.suffix.lower() != ".jsonl"):
        return DataCheck(source, "unknown", problem=f"{source!r} is not {noun} we can read",
                         fix=f"set {key} to {BUILTIN_INSTRUCTIONS if kind == 'sft' else 'prefs'}, one of {supported}, "
                             f"or a .jsonl of {list(fields)}")
    return _local(source, path, fields, key, f"{noun} (shared/data/instructions/schema.py)",
                  f"convert the rows to our schema ({', '.join(fields)}), or set {key} to one of {supported}")


__all__ = ["BUILTIN_INSTRUCTIONS", "DataCheck", "HUB_TIMEOUT_S", "check_corpus", "check_examples",
           "first_row_fields", "hub_name", "hub_status", "hub_tokenizer", "is_text_corpus", "local_path",
           "offline_reason"]
