"""Is a stage's artifact still what its config and inputs would make? (``journey run``'s skip rule)

A finished artifact is *fresh* for a resolved config when:

1. its stored config equals the resolved one (``overwrite``, ``runs_dir`` aside: they say where and
   whether to write, not what);
2. every parent it was made from still exists and was not remade after it (a parent's
   ``created_at`` later than the artifact's means its input changed under it);
3. no local data file named in its config changed after it was made (file modification time: the
   data fingerprint itself is only known once the stage has read the data);
4. none of the stages it consumes is about to run again in this journey (the caller says which).

``why_stale`` returns the first reason it is not, in words a person can act on, or None.
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from shared.registry.registry import Artifact, ArtifactNotFound, Registry

#: Config keys that do not change what a stage makes.
IGNORED_KEYS = frozenset({"overwrite", "runs_dir"})


def config_changes(stored: Mapping[str, Any], resolved: Mapping[str, Any], prefix: str = "",
                   defaults: Mapping[str, Any] | None = None) -> list[str]:
    """``key: old -> new`` for every leaf that differs (IGNORED_KEYS aside at the top level).

    ``defaults``: the config class's defaults (same nesting). A key the stored config does not have
    (a field added to the class since) is no change when the resolved value is its default: a new
    option must not make every finished stage stale.
    """
    changes = []
    for key in sorted(set(stored) | set(resolved)):
        if not prefix and key in IGNORED_KEYS:
            continue
        old, new = stored.get(key, "<absent>"), resolved.get(key, "<absent>")
        default = (defaults or {}).get(key, "<absent>")
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            changes += config_changes(old, new, f"{prefix}{key}.",
                                      default if isinstance(default, Mapping) else None)
        elif key not in stored and defaults is not None and new == default:
            continue
        elif old != new:
            changes.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return changes


def _time(artifact: Artifact) -> _dt.datetime:
    return _dt.datetime.fromisoformat(artifact.created_at)


def _local_files(config: Any) -> Iterable[Path]:
    """Existing files named by string values of the config: a bare path, a ``file:<path>`` source or the local
    copy of a hub dataset (``hf:<dataset>@<path>``). Read as strings: the registry knows no source syntax."""
    if isinstance(config, Mapping):
        for value in config.values():
            yield from _local_files(value)
    elif isinstance(config, (list, tuple)):
        for value in config:
            yield from _local_files(value)
    elif isinstance(config, str) and "/" in config:
        for candidate in dict.fromkeys((config, config.removeprefix("file:"), config.rpartition("@")[2])):
            if Path(candidate).is_file():
                yield Path(candidate)
                break


def why_stale(registry: Registry, artifact: Artifact, config: Mapping[str, Any],
              rerunning: Iterable[str] = (), defaults: Mapping[str, Any] | None = None) -> str | None:
    """Why ``artifact`` must be remade for the resolved ``config`` (a plain dict), or None when it is fresh.

    ``rerunning``: stages (of the same run) that will run again before this one; an artifact made
    from one of them is stale. ``defaults``: the config class's defaults (see ``config_changes``).
    """
    changes = config_changes(artifact.config, config, defaults=defaults)
    if changes:
        more = f" (+{len(changes) - 3} more)" if len(changes) > 3 else ""
        return "config changed: " + "; ".join(changes[:3]) + more
    made = _time(artifact)
    rerunning = set(rerunning)
    for parent_id in artifact.parents:
        run, _, stage = parent_id.partition("/")
        if run == artifact.run and stage in rerunning:
            return f"its input {stage} runs again"
        try:
            parent = registry.resolve(parent_id)
        except ArtifactNotFound:
            return f"its input {parent_id} is gone"
        if _time(parent) > made:
            return f"its input {parent_id} was remade after it"
    for path in _local_files(config):
        if _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc) > made:
            return f"data file {path} changed after it was made"
    return None


__all__ = ["IGNORED_KEYS", "config_changes", "why_stale"]
