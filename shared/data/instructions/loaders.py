"""Load SFT examples and preference pairs by source name, as lists of ``schema`` dicts.

Sources:

- ``builtin:instructions`` (SFT only): the generated set (``builtin``);
- ``hf:<dataset>`` for the datasets in ``hub_formats.FORMATS``: SFT from
  ``databricks/databricks-dolly-15k``, ``OpenAssistant/oasst1``, ``Open-Orca/SlimOrca``;
  preferences from ``Anthropic/hh-rlhf``, ``HuggingFaceH4/ultrafeedback_binarized``. Read through
  ``shared.data.hub`` (streamed), so ``data_files=`` pointing at a local copy of the dataset's
  parquet/jsonl files works offline with the same ids; in a config (where there is no
  ``data_files=``) write ``hf:<dataset>@<local file or folder>``, e.g.
  ``hf:databricks/databricks-dolly-15k@data/dolly/train.jsonl``: the named dataset's converter over the
  local copy (the ``@`` form and ``data_files=`` together are an error);
- ``file:<path>.jsonl`` or a plain ``.jsonl`` path: rows already in our schema, one per line
  (what the prefs stage writes). Read with ``json``, not ``datasets``: Arrow would unify
  ``tool_call.arguments`` of different tools into one struct padded with nulls.

``split`` is ``train`` or ``heldout`` for every source: the hash of each example's id decides
(``schema.split_name``), whatever split the hub has (we read the hub's training split, or
``train_prefs`` for ultrafeedback). ``max_examples`` stops reading once that many examples of
the split are found. Every example is validated; a set with none raises :class:`DataError`.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from shared.data.documents import DataError
from shared.data.hub import _load_streaming, _resolve_builder, parse_hf_spec
from shared.data.instructions.builtin import SOURCE as BUILTIN_SOURCE
from shared.data.instructions.builtin import generate_instructions
from shared.data.instructions.hub_formats import FORMATS, HubFormat
from shared.data.instructions.schema import (check_nonempty, check_split, split_name, validate_preference_example,
                                             validate_sft_example)
from shared.data.local import jsonl_records

log = logging.getLogger(__name__)
Validate = Callable[[Any, str], None]


def load_sft_dataset(source: str, split: str = "train", max_examples: int | None = None,
                     data_files: Any = None) -> list[dict]:
    """SFT examples of ``source`` in ``split`` (see the module docstring for the sources)."""
    return _load(source, "sft", split, max_examples, data_files)


def load_preference_dataset(source: str, split: str = "train", max_examples: int | None = None,
                            data_files: Any = None) -> list[dict]:
    """Preference pairs of ``source`` in ``split`` (see the module docstring for the sources)."""
    return _load(source, "preference", split, max_examples, data_files)


def _load(source: str, kind: str, split: str, max_examples: int | None, data_files: Any) -> list[dict]:
    check_split(split)
    if max_examples is not None and max_examples < 1:
        raise DataError(f"max_examples must be >= 1 or None (no limit), got {max_examples}")
    validate = validate_sft_example if kind == "sft" else validate_preference_example
    rows = _rows(source, kind, data_files, validate)
    kept = list(islice((r for r in rows if split_name(r["id"]) == split), max_examples))
    check_nonempty(kept, f"{source} (split {split!r})", "SFT examples" if kind == "sft" else "preference pairs")
    return kept


def _rows(source: str, kind: str, data_files: Any, validate: Validate) -> Iterator[dict]:
    """Every validated example of ``source``, unsplit, in the source's order."""
    prefix, sep, rest = source.partition(":")
    if data_files is not None and not (sep and prefix == "hf"):
        raise DataError(f"data_files= only applies to hf:<dataset> sources, not {source!r}")
    if source == BUILTIN_SOURCE:
        if kind != "sft":
            raise DataError(f"{source} has no preference pairs; sample them with the prefs stage, or use "
                            f"hf:Anthropic/hh-rlhf, hf:HuggingFaceH4/ultrafeedback_binarized or a .jsonl of pairs")
        return iter(generate_instructions())
    if sep and prefix == "hf":
        return _hub_rows(rest, source, kind, data_files, validate)
    path = Path(rest if sep and prefix == "file" else source)
    if path.suffix.lower() == ".jsonl" or path.exists():
        return read_jsonl(path, validate)
    raise DataError(f"unknown {kind} source {source!r}; use {BUILTIN_SOURCE} (SFT), "
                    f"{', '.join('hf:' + name for name in _names(kind))}, or a .jsonl file in our schema")


def _names(kind: str) -> list[str]:
    return [name for name, fmt in FORMATS.items() if fmt.kind == kind]


def split_local_copy(spec: str) -> tuple[str, str | None]:
    """``<dataset>@<path>`` -> ``(<dataset>, <path>)``: a hub dataset read from a local copy; else ``(spec, None)``."""
    name, at, path = spec.partition("@")
    return (name, path) if at else (spec, None)


def _local_copy(spec: str, source: str, data_files: Any) -> tuple[str, Any]:
    """``<dataset>@<path>`` -> ``(<dataset>, [<path>])``: the config form of ``data_files=``; other specs unchanged."""
    name, path = split_local_copy(spec)
    if path is None:
        return spec, data_files
    if data_files is not None:
        raise DataError(f"{source} names a local copy after '@' and data_files= is given too; pass one of them")
    if not name or not path:
        raise DataError(f"{source}: write hf:<dataset>@<local file or folder>, e.g. "
                        "hf:databricks/databricks-dolly-15k@data/dolly.jsonl")
    if not Path(path).exists():
        raise DataError(f"{source}: the local copy {path} does not exist; download the dataset's parquet/jsonl "
                        f"files there, or drop '@{path}' to stream hf:{name} from the hub")
    return name, [path]


def _hub_rows(spec: str, source: str, kind: str, data_files: Any, validate: Validate) -> Iterator[dict]:
    spec, data_files = _local_copy(spec, source, data_files)
    fmt = _format(spec, source, kind)
    skipped: Counter = Counter()
    n = 0
    for n, example in enumerate(fmt.convert(_checked(_records(spec, source, fmt, data_files), fmt, source),
                                            skipped), 1):
        validate(example, f"{source} example {example['id']}")
        yield example
    if skipped:
        log.warning("%s: skipped %d rows that make no valid example (%d kept): %s", source,
                    sum(skipped.values()), n, dict(skipped))


def _format(spec: str, source: str, kind: str) -> HubFormat:
    name, _ = parse_hf_spec(spec)
    fmt = FORMATS.get(name)
    if fmt is None:
        raise DataError(f"{source}: no converter for dataset {name!r}; {kind} datasets we read: "
                        f"{['hf:' + n for n in _names(kind)]} (a local copy goes in data_files=), "
                        "or convert your data to a .jsonl in our schema")
    if fmt.kind != kind:
        other = "load_preference_dataset" if fmt.kind == "preference" else "load_sft_dataset"
        raise DataError(f"{source} is a {fmt.kind} dataset, not {kind} data; load it with {other}")
    return fmt


def _records(spec: str, source: str, fmt: HubFormat, data_files: Any) -> Iterator[dict]:
    """The dataset's raw records, streamed by ``shared.data.hub`` (a local copy via ``data_files``)."""
    name, config = parse_hf_spec(spec)
    builder, config, files = _resolve_builder(name, config, data_files)
    split = fmt.hub_split if builder == name else "train"  # local copies hold one split, "train"
    return iter(_load_streaming(builder, config, split, files, None, source))


def _checked(records: Iterator[dict], fmt: HubFormat, source: str) -> Iterator[tuple[int, dict]]:
    """``(row, record)``; a record without one of ``fmt.fields`` means the data is not that dataset."""
    for row, record in enumerate(records):
        missing = [f for f in fmt.fields if f not in record]
        if missing:
            raise DataError(f"{source} row {row} has no field {missing[0]!r} (it has {sorted(record)}); "
                            f"{fmt.dataset} rows need {list(fmt.fields)}: check that data_files= holds a copy "
                            f"of {fmt.dataset}, or convert the data to a .jsonl in our schema")
        yield row, record


def read_jsonl(path: Path, validate: Validate) -> Iterator[dict]:
    """Rows of a ``.jsonl`` file in our schema, each validated (errors name the file and line)."""
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file; check the path (relative to {Path.cwd()})")
    for number, row in jsonl_records(path):
        validate(row, f"{path}:{number}")
        yield row
