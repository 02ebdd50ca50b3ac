"""Documents from a Hugging Face dataset, streamed (``hf:<dataset>[:<config>]``).

``hf:HuggingFaceFW/fineweb-edu:sample-10BT`` calls
``datasets.load_dataset("HuggingFaceFW/fineweb-edu", "sample-10BT", split="train", streaming=True)``
and reads the text from field ``text_field`` (``text`` by default; code datasets such as The Stack
use ``content``). Streaming means nothing is downloaded beyond what ``max_bytes`` consumes.

The same code path reads local copies of hub data, which is how it is tested offline and how a
cluster without internet uses a pre-downloaded shard:
- the hub spec with ``data_files=<local files>``: read with the generic builder, same ids;
- ``hf:<path to a .parquet/.jsonl/.json file or a directory of them>``, which picks the builder;
- ``hf:parquet`` / ``hf:json`` with ``data_files=`` (the ``datasets`` builders, globs allowed).

Ids come from ``id_field`` when the dataset has it (fineweb's ``id``), else ``<dataset>/<row>``:
stable as long as the dataset revision is. Rows with null or whitespace-only text are skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from shared.data.documents import DataError, Document, as_text, missing_field
from shared.data.local import find_files

_BUILDER_BY_SUFFIX = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


def parse_hf_spec(spec: str) -> tuple[str, str | None]:
    """``"org/name:config"`` -> ``("org/name", "config")``; a local path is kept whole."""
    if Path(spec).exists():
        return spec, None
    name, _, config = spec.partition(":")
    if not name:
        raise DataError("hf: source needs a dataset name, e.g. hf:HuggingFaceFW/fineweb-edu:sample-10BT")
    return name, config or None


def iter_hub(
    spec: str,
    source: str,
    *,
    split: str = "train",
    text_field: str = "text",
    id_field: str = "id",
    data_files: Any = None,
    revision: str | None = None,
) -> Iterator[Document]:
    """Stream documents of ``spec`` (the part after ``hf:``) in the dataset's own order."""
    name, config = parse_hf_spec(spec)
    builder, config, data_files = _resolve_builder(name, config, data_files)
    dataset = _load_streaming(builder, config, split, data_files, revision, source)
    columns = list(dataset.features) if dataset.features is not None else None
    if columns is not None and text_field not in columns:
        raise missing_field(source, text_field, columns)
    for row, record in enumerate(dataset):
        text = record.get(text_field)
        if text is None:
            continue
        doc_id = record.get(id_field)
        doc_id = str(doc_id) if doc_id is not None else f"{name}/{row}"
        yield Document(id=doc_id, text=as_text(text, f"{source} row {row}", text_field), source=source)


def _resolve_builder(name: str, config: str | None, data_files: Any) -> tuple[str, str | None, Any]:
    """(builder, config, data_files) for ``load_dataset``.

    Local files are read with the generic ``parquet``/``json`` builder whatever the dataset is
    called, so ``hf:HuggingFaceFW/fineweb-edu:sample-10BT`` with ``data_files=<local copy>``
    needs no network and yields the same ids as the hub would (the config names a hub subset,
    which the generic builder does not have, so it is dropped).
    """
    if Path(name).exists():
        if data_files is not None:
            raise DataError(f"hf:{name} is a local path; pass either the path or data_files=, not both")
        return _generic_builder(_files_under(Path(name)), f"hf:{name}")
    if isinstance(data_files, (str, Path)):
        data_files = [data_files]
    if isinstance(data_files, list) and data_files and all(Path(f).exists() for f in data_files):
        files = [f for p in map(Path, data_files) for f in _files_under(p)]
        return _generic_builder(files, f"data_files={data_files}")
    return name, config, data_files


def _files_under(path: Path) -> list[Path]:
    return find_files(path, tuple(_BUILDER_BY_SUFFIX)) if path.is_dir() else [path]


def _generic_builder(files: list[Path], what: str) -> tuple[str, None, list[str]]:
    builders = {_BUILDER_BY_SUFFIX.get(p.suffix.lower()) for p in files}
    if len(builders) != 1 or None in builders:
        raise DataError(
            f"{what} must be .parquet or .jsonl/.json files of one kind (found {[p.name for p in files][:5]}); "
            "use file:<path> for plain text"
        )
    return builders.pop(), None, [str(p) for p in files]


def _load_streaming(builder: str, config: str | None, split: str, data_files: Any, revision: str | None, source: str):
    import datasets  # heavy import (~1 s): only when a hub source is used

    try:
        return datasets.load_dataset(
            builder, config, split=split, streaming=True, data_files=data_files, revision=revision
        )
    except (FileNotFoundError, ConnectionError) as exc:
        raise DataError(
            f"cannot load {source}: {exc}; check the dataset name, config and network, or pass "
            "data_files= pointing at a local copy of the dataset's parquet/jsonl files"
        ) from exc
    except ValueError as exc:
        raise DataError(f"cannot load {source}: {exc}; check the config name and split={split!r}") from exc
