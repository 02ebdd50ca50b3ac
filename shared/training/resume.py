"""Continuing an interrupted training stage from its last checkpoint.

Every training stage (pretrain, cpt, and the TRL stages sft, dpo, reward, rl) keeps its resumable
checkpoints in one directory per stage, ``<runs>/<run>/_ckpt/<stage>/`` (``checkpoint_root``), with
``resume.json`` beside them: the resolved config the checkpoints were written under (``overwrite``
and ``runs_dir`` aside: they say where and whether to write, not what) and the stage's inputs
(parent artifacts with their ``created_at``, a data fingerprint). How the checkpoints themselves
look is the trainer's business; the caller hands ``plan_resume`` a ``latest(directory)`` function
that finds the newest complete one.

The rules (``plan_resume``), the same for every stage:

- resume only when the stage's artifact is unfinished (no ``journey.json``: the last attempt was
  interrupted) *and* ``resume.json`` matches the config and inputs of this attempt;
- otherwise delete the old checkpoints and start clean, saying why in one line; a finished
  artifact being replaced (``overwrite=true``) never resumes;
- resuming prints ``resuming <stage> from step N (checkpoint <path>)``;
- once the stage has its final weights, ``discard`` deletes the directory (checkpoints are big and
  a finished stage has no use for them), so checkpoints on disk always mean an unfinished stage.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any

from shared.config import to_dict
from shared.registry.freshness import IGNORED_KEYS, config_changes

CKPT_DIR = "_ckpt"
RESUME_FILE = "resume.json"

#: ``latest(directory)`` -> ``(checkpoint path, step)`` of the newest complete checkpoint under it, or None.
FindLatest = Callable[[Path], "tuple[Path, int] | None"]


def checkpoint_root(root: str | Path, run: str, stage: str) -> Path:
    """The directory holding ``stage``'s resumable checkpoints in ``run`` under the artifact root ``root``."""
    return Path(root).resolve() / run / CKPT_DIR / stage


def resume_key(cfg: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """What must match for checkpoints to be reused: the config (a dataclass or dict) and the inputs,
    as plain JSON values (so a key read back from ``resume.json`` compares equal to a fresh one)."""
    config = to_dict(cfg) if is_dataclass(cfg) and not isinstance(cfg, type) else dict(cfg)
    config = {k: v for k, v in config.items() if k not in IGNORED_KEYS}
    return json.loads(json.dumps({"config": config, "inputs": dict(inputs)}, default=str))


@dataclass
class ResumePlan:
    """Where a stage's checkpoints go and, when it resumes, the checkpoint and its step."""

    directory: Path
    checkpoint: Path | None = None
    step: int = 0

    @property
    def resuming(self) -> bool:
        return self.checkpoint is not None


def _why_not(stored: Any, key: dict[str, Any], finished: bool) -> str | None:
    """Why the checkpoints in a directory whose ``resume.json`` holds ``stored`` must not be reused."""
    if finished:
        return "its finished artifact is being replaced (overwrite=true)"
    if not isinstance(stored, dict) or set(stored) != {"config", "inputs"}:
        return f"they carry no readable {RESUME_FILE} saying which config wrote them"
    changes = (config_changes(stored["config"], key["config"])
               + config_changes(stored["inputs"], key["inputs"], "input "))
    if changes:
        more = f" (+{len(changes) - 3} more)" if len(changes) > 3 else ""
        return "they were written under another config: " + "; ".join(changes[:3]) + more
    return None


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def plan_resume(directory: Path, stage: str, key: dict[str, Any], latest: FindLatest, finished: bool = False,
                log: Callable[[str], None] = print) -> ResumePlan:
    """Decide whether ``stage`` continues from a checkpoint in ``directory`` (see the module docstring).

    ``key`` is ``resume_key(cfg, inputs)`` of this attempt; ``finished`` says the stage's artifact
    has its ``journey.json`` (known only to a caller that looked before ``Registry.stage_dir``).
    On return ``directory`` exists and its ``resume.json`` holds ``key``; when not resuming it holds
    nothing else.
    """
    directory = Path(directory)
    if directory.is_dir() and any(p.name != RESUME_FILE for p in directory.iterdir()):
        why = _why_not(_read(directory / RESUME_FILE), key, finished)
        found = latest(directory) if why is None else None
        if found is not None:
            checkpoint, step = found
            log(f"resuming {stage} from step {step} (checkpoint {checkpoint})")
            return ResumePlan(directory, checkpoint, step)
        if why is None:
            log(f"{stage}: starting from step 0: no complete checkpoint in {directory} (the last attempt "
                "stopped before its first); removed what it left")
        else:
            log(f"{stage}: starting from step 0, not from the checkpoints in {directory}: {why}; removed them")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RESUME_FILE).write_text(json.dumps(key, indent=1, sort_keys=True), encoding="utf-8")
    return ResumePlan(directory)


def discard(directory: Path) -> None:
    """Delete a stage's checkpoints once it has its final weights (see the module docstring)."""
    shutil.rmtree(directory, ignore_errors=True)


def artifact_stamp(artifact: Any) -> str | None:
    """``<id>@<created_at>`` of a registered artifact (None for None): an input that was remade differs."""
    return None if artifact is None else f"{artifact.id}@{artifact.created_at}"


__all__ = ["CKPT_DIR", "FindLatest", "RESUME_FILE", "ResumePlan", "artifact_stamp", "checkpoint_root", "discard",
           "plan_resume", "resume_key"]
