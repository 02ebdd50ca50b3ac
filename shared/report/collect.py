"""Read one run out of the registry into plain data: the report's only input.

Everything comes from the artifacts' ``journey.json`` manifests and the files their stages wrote
into their directories (docs/architecture.md, Artifacts and lineage): the scorecard
(``eval/scorecard.json``), the interpret stage's ``interpret.json``, the quantize stage's
``quantize.json``, the post-training stages' ``heldout_eval.json`` / ``safety_helpfulness.json`` and
each stage's PNGs. A file that is missing leaves its part ``None``; one that cannot be read is
named in ``problems`` (the report says so) instead of stopping the report.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import stages as stage_table
from shared.registry import Artifact, ArtifactNotFound, Registry
from shared.report.fmt import is_number

#: What a quantize variant's box and row show (its stage name, ``quantize-<variant>``, is not in the table).
KIND_HEADLINES = {"quantized": ("bytes", "decode_tokens_per_s", "ppl_delta", "top1_agreement"),
                  "gguf": ("bytes", "decode_tokens_per_s", "ppl_delta", "top1_agreement")}
#: Kinds whose artifacts are variants of another model, reported in the quantization section.
VARIANT_KINDS = ("quantized", "gguf")
#: A timing under one of these names already is the stage's whole wall time (the others are its parts).
TOTAL_TIMINGS = ("wall_s", "total_s")


@dataclass
class StageView:
    """One artifact as the report needs it."""

    artifact: Artifact
    depth: int  # longest parent chain within the run (0: made from nothing in it)
    wall_s: float | None  # the stage's time, from its timings; None when it recorded none
    images: list[Path]  # the PNGs in its directory (top level), sorted by name
    headlines: tuple[str, ...]  # the stage table's headline metrics (or its kind's)

    @property
    def id(self) -> str:
        return self.artifact.id

    @property
    def stage(self) -> str:
        return self.artifact.stage

    @property
    def kind(self) -> str:
        return self.artifact.kind

    @property
    def metrics(self) -> dict[str, Any]:
        return self.artifact.metrics

    @property
    def config(self) -> dict[str, Any]:
        return self.artifact.config

    def has(self, *keys: str) -> bool:
        """Every key is a number in the metrics (what a sentence needs before it quotes them)."""
        return all(is_number(self.metrics.get(k)) for k in keys)


@dataclass
class RunData:
    """A run's artifacts in lineage order and the stage files the report reads."""

    run: str
    root: Path  # the run's directory
    stages: list[StageView]
    external_parents: list[str]  # parents from other runs (an imported checkpoint, a shared tokenizer)
    scorecard: dict[str, Any] | None = None
    interpret: dict[str, Any] | None = None
    quantize: dict[str, Any] | None = None
    # post-training comparisons by stage: {"heldout": {model: summary}, "safety": {model: summary}}
    comparisons: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # files that exist but could not be read
    lineage_text: str = ""  # the registry's text tree of the run (``journey artifacts``)

    def get(self, stage: str) -> StageView | None:
        return next((s for s in self.stages if s.stage == stage), None)

    def of_table(self, name: str) -> StageView | None:
        """The artifact of stage-table stage ``name`` (the same name, as every journey stage is registered)."""
        return self.get(name)


def lineage_order(artifacts: list[Artifact]) -> list[Artifact]:
    """Parents before children; among artifacts that are ready at once, the one finished first.

    ``artifacts`` come in registry order (by ``created_at``); a stage rerun later than its children
    still comes before them here.
    """
    ids = {a.id for a in artifacts}
    waiting = {a.id: {p for p in a.parents if p in ids and p != a.id} for a in artifacts}
    done: list[Artifact] = []
    placed: set[str] = set()
    while len(done) < len(artifacts):
        ready = [a for a in artifacts if a.id not in placed and waiting[a.id] <= placed]
        if not ready:  # a cycle cannot be registered (parents must exist first); keep registry order
            ready = [a for a in artifacts if a.id not in placed]
        done.append(ready[0])
        placed.add(ready[0].id)
    return done


def depths(ordered: list[Artifact]) -> dict[str, int]:
    """Each artifact's longest chain of parents within ``ordered`` (lineage order)."""
    depth: dict[str, int] = {}
    for a in ordered:
        depth[a.id] = 1 + max((depth[p] for p in a.parents if p in depth), default=-1)
    return depth


def wall_time(timings: dict[str, Any]) -> float | None:
    """The stage's wall time: its total when it recorded one, else the sum of its parts."""
    numbers = {k: float(v) for k, v in timings.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for key in TOTAL_TIMINGS:
        if key in numbers:
            return numbers[key]
    return sum(numbers.values()) if numbers else None


def headlines_of(artifact: Artifact) -> tuple[str, ...]:
    stage = stage_table.BY_NAME.get(artifact.stage)
    if stage is not None and stage.headlines:
        return stage.headlines
    return KIND_HEADLINES.get(artifact.kind, ())


def read_json(path: Path, problems: list[str]) -> Any:
    """The JSON in ``path``; ``None`` when it does not exist, and a line in ``problems`` when it is unreadable."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{path} could not be read ({exc}); rerun its stage to rewrite it")
        return None


def collect(registry: Registry, run: str) -> RunData:
    """The run's artifacts and stage files (see module docstring); ``ArtifactNotFound`` for a run with none."""
    if run not in registry.runs():
        known = ", ".join(registry.runs()) or "none yet"
        raise ArtifactNotFound(f"run {run!r} has no finished artifacts under {registry.root} (runs there: {known}); "
                               f"run `journey run run={run}` first, or pass runs_dir=<the folder holding it>")
    ordered = lineage_order(registry.artifacts(run))
    depth = depths(ordered)
    ids = {a.id for a in ordered}
    views = [StageView(a, depth[a.id], wall_time(a.timings),
                       sorted(p for p in a.dir.glob("*.png") if p.is_file()), headlines_of(a)) for a in ordered]
    external = sorted({p for a in ordered for p in a.parents if p not in ids})
    data = RunData(run=run, root=registry.root / run, stages=views, external_parents=external,
                   lineage_text=registry.lineage(run))
    problems = data.problems
    for view in views:
        folder = view.artifact.dir
        if view.kind == "report" and (folder / "scorecard.json").exists():
            data.scorecard = read_json(folder / "scorecard.json", problems)
        if view.kind == "report" and (folder / "interpret.json").exists():
            data.interpret = read_json(folder / "interpret.json", problems)
        if view.kind == "report" and (folder / "quantize.json").exists():
            data.quantize = read_json(folder / "quantize.json", problems)
        compared = {}
        for key, name in (("heldout", "heldout_eval.json"), ("safety", "safety_helpfulness.json"),
                          ("safety_hard", "safety_hard.json")):
            found = read_json(folder / name, problems)
            if isinstance(found, dict) and isinstance(found.get("summaries"), dict):
                compared[key] = found["summaries"]
        if compared:
            data.comparisons[view.stage] = compared
    for name, part in (("scorecard", data.scorecard), ("interpret", data.interpret), ("quantize", data.quantize)):
        if part is not None and not isinstance(part, dict):
            problems.append(f"the {name} file of run {run} is not a JSON object; rerun that stage")
            setattr(data, name, None)
    return data
