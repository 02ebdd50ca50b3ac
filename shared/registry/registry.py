"""Artifacts and their lineage.

Every stage writes one artifact: a directory ``<root>/<run>/<stage>/`` with its payload (an HF
checkpoint, a tokenizer, a GGUF file, an index, ...) and ``journey.json``, written last and
atomically, so a directory without it is an unfinished stage and is never resolved. The registry
only reads and writes these files: there is no database to get out of sync.

Names resolve as: ``<run>/<stage>`` (exact), ``<stage>`` (that stage in the current run, else the
newest anywhere), ``latest:<stage>`` (newest anywhere), or a path to an artifact directory.
"""
from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from shared.config import REPO_ROOT, to_dict

MANIFEST = "journey.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


MODEL_KINDS = ("hf-model", "quantized", "gguf")  # artifact kinds a generator can serve


class ArtifactNotFound(LookupError):
    """A name did not resolve to a finished artifact."""


@dataclass
class Artifact:
    """What ``journey.json`` records about one stage's output."""

    run: str
    stage: str
    kind: str  # hf-model | tokenizer | dataset | gguf | index | report | ...
    path: str
    parents: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str | None = None
    git_commit: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    created_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Where it was made (``environment()``); empty in manifests written before it was recorded.
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.run}/{self.stage}"

    @property
    def dir(self) -> Path:
        return Path(self.path)


def git_commit() -> str | None:
    """The repository's HEAD commit (with ``-dirty`` when there are local changes), if in a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


#: Libraries whose versions decide what a stage computes; each artifact records the installed ones.
VERSIONED_PACKAGES = ("torch", "transformers", "trl", "peft", "ray", "datasets", "lm_eval", "llama_cpp_python")


def environment() -> dict[str, Any]:
    """Where this process runs: host, OS, Python, CPUs, memory, GPUs and the versions of ``VERSIONED_PACKAGES``.

    Recorded in every artifact by ``register`` (the report's Environment section). It is the
    registering process's view: a Ray Train stage's workers run on the same machine in a local
    session, not necessarily on a cluster. Cheap (a few ms, then cached): versions come from the
    installed packages' metadata, never by importing them, and GPUs are read without initialising CUDA.
    """
    return dict(_environment())


@functools.lru_cache(maxsize=1)
def _environment() -> dict[str, Any]:
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None  # not installed: recorded as such, so the report can say so
    return {"hostname": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "memory_bytes": _total_memory(), "gpus": _gpu_names(),
            "versions": versions}


def _total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system that reports it
        return None


def _gpu_names() -> list[str]:
    """GPU names, without importing torch or initialising CUDA.

    Through torch only when it is imported and CUDA is already initialised: calling into CUDA first
    would make a later fork (a DataLoader worker) unable to use it. Otherwise the NVIDIA driver's
    files, which name every GPU it drives; an empty list where neither applies (no GPU, or not Linux).
    """
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except (AttributeError, RuntimeError):  # a torch without CUDA support
        pass
    names = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            model = next((line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                          if line.startswith("Model:")), None)
        except OSError:
            continue
        if model:
            names.append(model)
    return names


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temp file + rename, so readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.write("\n")
    os.replace(tmp, path)


class Registry:
    """Reads and writes artifacts under ``root`` (default ``$JOURNEY_RUNS`` or ``./runs``)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root or os.environ.get("JOURNEY_RUNS", "runs")).resolve()

    # ---- writing -------------------------------------------------------------------------
    def stage_dir(self, run: str, stage: str, overwrite: bool = False) -> Path:
        """Create and return the directory a stage writes into.

        A finished artifact is never silently replaced: pass ``overwrite=True`` to redo a stage.
        """
        for name, what in ((run, "run"), (stage, "stage")):
            if not _NAME.match(name):
                raise ValueError(f"{what} name {name!r} must be letters, digits, '.', '_' or '-'")
        path = self.root / run / stage
        if (path / MANIFEST).exists() and not overwrite:
            raise FileExistsError(f"artifact {run}/{stage} already exists at {path}; "
                                  f"use another run name or pass overwrite=true")
        if (path / MANIFEST).exists():
            (path / MANIFEST).unlink()  # mark unfinished while it is rewritten
        path.mkdir(parents=True, exist_ok=True)
        return path

    def register(self, run: str, stage: str, kind: str, parents: list[str] | None = None,
                 config: Any = None, metrics: dict[str, Any] | None = None,
                 timings: dict[str, float] | None = None, data_fingerprint: str | None = None,
                 extra: dict[str, Any] | None = None) -> Artifact:
        """Finish a stage: write its ``journey.json``. Parents must be finished artifacts (ids or names).

        ``config`` is the job's config dataclass (stored as its plain dict) or already a dict.
        """
        if is_dataclass(config) and not isinstance(config, type):
            config = to_dict(config)
        path = self.root / run / stage
        if not path.is_dir():
            raise FileNotFoundError(f"{path} does not exist; call stage_dir() before register()")
        parent_ids = [self.resolve(p).id for p in (parents or [])]
        art = Artifact(run=run, stage=stage, kind=kind, path=str(path), parents=parent_ids,
                       config=config or {}, data_fingerprint=data_fingerprint, git_commit=git_commit(),
                       metrics=metrics or {}, timings=timings or {},
                       created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds"),
                       extra=extra or {}, environment=environment())
        write_json_atomic(path / MANIFEST, asdict(art))
        return art

    def update_metrics(self, artifact: Artifact, **metrics: Any) -> Artifact:
        """Merge metrics measured later (evaluation) into an artifact's manifest."""
        artifact.metrics.update(metrics)
        write_json_atomic(artifact.dir / MANIFEST, asdict(artifact))
        return artifact

    # ---- reading -------------------------------------------------------------------------
    @staticmethod
    def load(path: str | Path) -> Artifact:
        """Read the artifact in directory ``path``."""
        manifest = Path(path) / MANIFEST
        if not manifest.exists():
            raise ArtifactNotFound(f"{path} is not a finished artifact (no {MANIFEST})")
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ArtifactNotFound(f"{manifest} is corrupt ({exc}); rerun that stage") from None
        data["path"] = str(Path(path).resolve())  # the run folder may have moved
        known = Artifact.__dataclass_fields__
        return Artifact(**{k: v for k, v in data.items() if k in known})

    def runs(self) -> list[str]:
        """Run names, oldest first."""
        if not self.root.exists():
            return []
        runs = [p for p in self.root.iterdir() if p.is_dir() and any(p.glob(f"*/{MANIFEST}"))]
        return [p.name for p in sorted(runs, key=lambda p: p.stat().st_mtime)]

    def artifacts(self, run: str | None = None) -> list[Artifact]:
        """Finished artifacts (of one run, or all), oldest first."""
        runs = [run] if run else self.runs()
        found = [self.load(m.parent) for r in runs for m in (self.root / r).glob(f"*/{MANIFEST}")]
        return sorted(found, key=lambda a: (a.created_at, a.id))

    def models(self, run: str | None = None) -> list[Artifact]:
        """Finished artifacts a generator can serve (``MODEL_KINDS``), oldest first."""
        return [a for a in self.artifacts(run) if a.kind in MODEL_KINDS]

    def resolve(self, name: str, run: str | None = None) -> Artifact:
        """Resolve an artifact name (see module docstring); the error lists what exists."""
        if not name:
            raise ArtifactNotFound("empty artifact name; pass <run>/<stage>, <stage> or latest:<stage>")
        as_path = Path(name)
        if (as_path / MANIFEST).exists():
            return self.load(as_path)
        if name.startswith("latest:"):
            name, run = name.split(":", 1)[1], None
        if "/" in name and len(name.split("/")) == 2:
            r, s = name.split("/")
            if (self.root / r / s / MANIFEST).exists():
                return self.load(self.root / r / s)
        else:
            candidates = [a for a in self.artifacts(run) if a.stage == name]
            if not candidates and run:
                candidates = [a for a in self.artifacts() if a.stage == name]
            if candidates:
                return candidates[-1]
        have = ", ".join(a.id for a in self.artifacts()[-12:]) or "none yet"
        raise ArtifactNotFound(f"no artifact named {name!r} under {self.root}; existing: {have}. "
                               f"Run the stage that makes it, or check JOURNEY_RUNS")

    def ancestors(self, artifact: Artifact) -> list[Artifact]:
        """All artifacts this one was derived from, nearest first."""
        out, seen, queue = [], set(), list(artifact.parents)
        while queue:
            pid = queue.pop(0)
            if pid in seen:
                continue
            seen.add(pid)
            try:
                parent = self.resolve(pid)
            except ArtifactNotFound:
                continue  # a deleted parent leaves a gap in the lineage, not an error
            out.append(parent)
            queue.extend(parent.parents)
        return out

    def lineage(self, run: str | None = None) -> str:
        """A text tree of artifacts and their parents (``journey artifacts``)."""
        arts = self.artifacts(run)
        ids = {a.id for a in arts}
        children: dict[str, list[Artifact]] = {}
        roots = []
        for a in arts:
            in_view = [p for p in a.parents if p in ids]
            if in_view:  # drawn under its last parent (the model it continued from); others are named
                children.setdefault(in_view[-1], []).append(a)
            else:
                roots.append(a)
        lines: list[str] = []

        def walk(a: Artifact, depth: int) -> None:
            others = a.parents[:-1] if depth else a.parents
            note = f"  ({'also ' if depth else ''}from {', '.join(others)})" if others else ""
            key = _headline(a.metrics)
            lines.append(f"{'  ' * depth}{'└─ ' if depth else ''}{a.id} [{a.kind}]{key}{note}")
            for child in children.get(a.id, []):
                walk(child, depth + 1)

        for root in roots:
            walk(root, 0)
        return "\n".join(lines) if lines else f"no artifacts under {self.root}"


def _headline(metrics: dict[str, Any]) -> str:
    for key in ("val_loss", "domain_val_loss", "vocab_size"):
        if key in metrics and isinstance(metrics[key], (int, float)):
            return f" {key}={metrics[key]:.4g}"
    return ""
