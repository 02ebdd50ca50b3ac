"""``journey run``: every stage of the journey, in order, in one Ray session; rerun it to continue.

    journey run                       # tiny preset, in the run named tiny (again: continues or does nothing)
    journey run preset=smoke run=ci   # seconds per stage (the e2e test)
    journey run run=ci                # again: skips what is up to date, finishes what was interrupted
    journey run run=ci from=sft       # sft and every later stage again
    journey run run=ci only=[eval,interpret] verbose=true
    journey run preset=gpt2-124m init_from=imported/import   # your checkpoint (journey import SRC): no tokenizer/pretrain
    journey run pretrain.train.max_steps=100 stages=[tokenizer,pretrain]
    journey run stages=[tokenizer,pretrain,cpt,sft,prefs,dpo,reward,rl,quantize,eval]   # with the optional RL stages

The stages, their order and which run by default are the stage table's (``shared.stages``). Each
stage's run function (the one ``journey <stage>`` calls) runs in-process with
``configs/<stage>/<preset>.yaml`` plus this run's name and the per-stage overrides given here; every
stage's config is loaded and validated before the first one starts.

Rerunning a run is incremental: a stage whose artifact was made from the same resolved config and
inputs is skipped, one that was interrupted runs again (training continues from its last
checkpoint) and the rest say why they run (``plan_stages``). The console shows one line per stage
(``ray_jobs._journey_view``); each stage's own output goes to ``runs/<run>/logs/<stage>.log``.
The last stages put every model of the run on the same tasks (``eval``: the scorecard) and look
inside them (``interpret``). Ends with ``runs/<run>/summary.md`` and the report,
``runs/<run>/report/index.html`` (``journey report <run>`` remakes it).
"""
from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

from ray_jobs._args import run_main
from ray_jobs._journey_view import JourneyView, StageLine, log_tail
from shared import stages as stage_table
from shared.config import ConfigError, describe, help_field, load_config, parse_overrides, to_dict
from shared.progress import clear_progress, progress_file
from shared.registry import ArtifactNotFound, Registry
from shared.registry.freshness import why_stale
from shared.report import write_report
from shared.report.collect import headlines_of, wall_time

STAGES = stage_table.JOURNEY
DEFAULT_STAGES = stage_table.DEFAULT_JOURNEY
#: Stages a journey from your own model (init_from=...) leaves out: it is pretrained and carries its tokenizer.
REPLACED_BY_INIT = ("tokenizer", "pretrain")


@dataclass
class _JourneyOptions:
    """The journey's own keys; ``JourneyConfig`` adds one override section per stage of the table."""

    run: Optional[str] = help_field(None, "run name (default: the preset's name, so running the same command "
                                          "again continues that run; a new name starts a new run)")
    preset: str = help_field("tiny", "preset used for every stage: configs/<stage>/<preset>.yaml")
    stages: list[str] = help_field(list(DEFAULT_STAGES), f"stages to run, in order, out of {list(STAGES)}")
    runs_dir: Optional[str] = help_field(None, "artifact root (default $JOURNEY_RUNS or ./runs)")
    from_stage: Optional[str] = help_field(None, "from=STAGE: run this stage and every later one again, "
                                                 "even when up to date (earlier stages must be finished)")
    only: Optional[list[str]] = help_field(None, "only=[STAGE,...]: run just these stages again, even when up to date")
    init_from: Optional[str] = help_field(None, "your own pretrained model instead of the tokenizer and pretrain "
                                                "stages: an artifact (`journey import SRC` makes one from a nanoGPT "
                                                "/ build-nanogpt / llm.c / HF checkpoint); cpt continues from it")
    verbose: bool = help_field(False, "show every stage's own output (Ray worker lines, per-step logs) instead "
                                      "of writing it to runs/<run>/logs/<stage>.log")

    @property
    def run_name(self) -> str:
        """The run: ``run``, else the preset's name (a Ctrl-C'd ``journey run`` continues when run again)."""
        return self.run or self.preset

    def validate(self) -> None:
        if self.init_from:  # the user's model is the pretrained one, with its own tokenizer
            self.stages = [s for s in self.stages if s not in REPLACED_BY_INIT]
        for stage in [*self.stages, *(self.only or []), *([self.from_stage] if self.from_stage else [])]:
            if stage not in STAGES:
                raise stage_table.unknown_stage(stage, STAGES)
        if self.only and self.from_stage:
            raise ConfigError("give from= or only=, not both")
        for name, chosen in (("from", [self.from_stage] if self.from_stage else []), ("only", self.only or [])):
            missing = [s for s in chosen if s not in self.stages]
            if missing:
                raise ConfigError(f"{name}= names {missing}, which this journey's stages={self.stages} do not "
                                  f"include; add them to stages=[...]")

    def overrides(self, stage: str) -> dict:
        """The ``<stage>.key=value`` overrides given for ``stage`` (with ``init_from``: cpt starts from that
        model and reads text with the tokenizer saved beside it, unless given otherwise)."""
        given = dict(getattr(self, stage))
        if self.init_from and stage == "cpt":
            given.setdefault("init_from", self.init_from)
            given.setdefault("tokenizer", self.init_from)
        return given


# One dict field per journey stage (``journey run sft.train.max_steps=3``), made from the table so a
# new stage gets its section without an edit here; a misspelt stage key fails with a did-you-mean.
JourneyConfig = dataclasses.make_dataclass(
    "JourneyConfig",
    [(s.name, dict, help_field({}, f"{s.name}.KEY=VALUE: overrides of the {s.name} stage's config (its keys: "
                                   f"`journey {s.name} --help`)"))
     for s in stage_table.STAGES if s.in_journey],
    bases=(_JourneyOptions,))
JourneyConfig.__module__ = __name__  # picklable and documented as this module's
JourneyConfig.__doc__ = "``journey run``'s config: the journey's own keys, then one override section per stage."


def stage_config(stage: str, preset: str, run: str, overrides: dict | None = None, runs_dir: str | None = None):
    """The stage's config: its ``<preset>`` preset, the run's name and the overrides given for it, validated.

    ``journey run`` and ``journey plan`` both resolve every stage through here.
    """
    spec = stage_table.get(stage)
    base: dict[str, Any] = {"run": run, **(overrides or {})}
    if runs_dir:
        base["runs_dir"] = runs_dir
    return load_config(spec.config, spec.presets, preset, base=base)


def stage_configs(jc: JourneyConfig, run: str) -> dict[str, Any]:
    """Every stage of ``jc.stages``, resolved and validated (nothing runs before all of them load)."""
    return {stage: stage_config(stage, jc.preset, run, jc.overrides(stage), jc.runs_dir) for stage in jc.stages}


def _headline_cells(artifact: Any) -> list[str]:
    """``key=value`` for each headline metric the artifact has (the stage table's, else its kind's)."""
    keys = headlines_of(artifact) or ("val_loss", "eval_loss")
    return [f"{k}={artifact.metrics[k]:.4g}" for k in keys if isinstance(artifact.metrics.get(k), (int, float))]


def summary(registry: Registry, run: str) -> str:
    """Markdown table of the run's artifacts and their headline metrics."""
    lines = ["| artifact | kind | headline metrics | time (s) |", "|---|---|---|---|"]
    for a in registry.artifacts(run):
        if a.kind == "report" and a.stage in ("eval", "interpret"):
            what = ("artifacts on the same tasks: eval/scorecard.md" if a.stage == "eval"
                    else "models looked inside: interpret/interpret.md")
            lines.append(f"| {a.id} | report | {len(a.parents)} {what} | {wall_time(a.timings) or 0:.0f} |")
            continue
        lines.append(f"| {a.id} | {a.kind} | {', '.join(_headline_cells(a))} | {wall_time(a.timings) or 0:.0f} |")
    return "\n".join(lines)


@dataclass
class StagePlan:
    """What ``journey run`` will do with one stage, and why."""

    stage: str
    action: str  # "run" | "skip"
    reason: str


def plan_stages(registry: Registry, jc: JourneyConfig, run: str, configs: dict[str, Any]) -> list[StagePlan]:
    """Decide, in journey order, which stages run and why (the skip rule: ``shared.registry.freshness``).

    ``only=`` runs just the stages named; ``from=`` runs that stage and every later one; both rerun
    what they name even when it is up to date. Otherwise a stage runs when it has no finished
    artifact (never run, or interrupted: training then continues from its last checkpoint) or its
    artifact is stale, and is skipped when fresh. A stage runs again when one it consumes does.
    Sets ``overwrite`` on the config of every finished stage it reruns (an interrupted one keeps
    ``overwrite=false``: its checkpoints are what it resumes from).
    """
    selected = list(jc.stages)
    forced: set[str] = set()
    if jc.only:
        selected = [s for s in jc.stages if s in jc.only]
        forced = set(selected)
    elif jc.from_stage:
        selected = list(jc.stages[jc.stages.index(jc.from_stage):])
        forced = set(selected)
    plans, rerunning = [], set()
    for stage in selected:
        try:
            artifact = registry.resolve(f"{run}/{stage}")
        except ArtifactNotFound:
            artifact = None
        if artifact is None:
            unfinished = (registry.root / run / stage).is_dir()
            reason = "interrupted before it finished" if unfinished else "not run yet"
        elif stage in forced:
            reason = "only=" if jc.only else "from="
            reason = f"asked for ({reason}{jc.only if jc.only else jc.from_stage})"
        else:
            consumed = sorted(set(stage_table.get(stage).consumes) & rerunning)
            reason = (f"its input {consumed[0]} runs again" if consumed
                      else why_stale(registry, artifact, to_dict(configs[stage]), rerunning,
                                     defaults=to_dict(type(configs[stage])())))
        if reason is None:
            plans.append(StagePlan(stage, "skip", "up to date"))
            continue
        if artifact is not None:
            configs[stage].overwrite = True  # replacing a finished artifact is what this run is for
        rerunning.add(stage)
        plans.append(StagePlan(stage, "run", reason))
    return plans


def _headline(artifact: Any) -> str:
    """The stage's first headline numbers, for its line in the progress view."""
    return ", ".join(_headline_cells(artifact)[:3])


class _CtrlC:
    """Records that SIGINT arrived (then raises KeyboardInterrupt as Python does), for the block's duration.

    A Ctrl-C reaches Ray's processes too, and the error their end causes in the driver can surface
    before the KeyboardInterrupt: the journey must still call it an interruption (resumable), not a failure.
    """

    def __init__(self) -> None:
        self.at: float | None = None
        self._previous = None

    def received(self) -> bool:
        return self.at is not None

    def _handle(self, signum, frame) -> None:
        self.at = time.time()
        raise KeyboardInterrupt

    def __enter__(self) -> "_CtrlC":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def run_journey(jc: JourneyConfig) -> str:
    """Run (or finish) the journey ``jc`` describes; return the run's name.

    Stages already made from the same config and inputs are skipped (``plan_stages``); each stage's
    output goes to ``runs/<run>/logs/<stage>.log`` (``verbose=true``: to the console). Ends with the
    summary table and the report (``runs/<run>/report/index.html``).
    """
    run = jc.run_name
    configs = stage_configs(jc, run)  # every stage resolves and validates before anything runs
    registry = Registry(jc.runs_dir)
    plans = plan_stages(registry, jc, run, configs)
    t0 = time.perf_counter()
    lines = [StageLine(p.stage, p.action, p.reason) for p in plans]
    with JourneyView(run, lines, verbose=jc.verbose) as view, _CtrlC() as ctrl_c:
        for plan in plans:
            if plan.action == "skip":
                view.skipped(plan.stage)
                view.lines[plan.stage].headline = _headline(registry.resolve(f"{run}/{plan.stage}"))
                continue
            progress = progress_file(registry.root, run, plan.stage)
            clear_progress(progress)
            log = registry.root / run / "logs" / f"{plan.stage}.log"
            try:
                with view.running(plan.stage, progress, log) as line:
                    try:
                        artifact = stage_table.get(plan.stage).run(configs[plan.stage])
                    except Exception as exc:
                        if ctrl_c.received():  # Ray's error about its interrupted processes surfaced first
                            raise KeyboardInterrupt from exc
                        raise
                    line.headline = _headline(artifact)
            except KeyboardInterrupt:
                view.print(f"interrupted during {plan.stage}: `journey run run={run}` continues from there "
                           f"(finished stages are kept; training resumes from its last checkpoint)")
                raise
            except BaseException:
                tail = log_tail(log) if not jc.verbose else ""
                view.print(f"stage {plan.stage} failed; its log: {log}" + (f"\n--- last lines ---\n{tail}" if tail else ""))
                raise
            finally:
                clear_progress(progress)
        table = summary(registry, run)
        total = time.perf_counter() - t0
        scorecard = registry.root / run / "eval" / "scorecard.md"
        (registry.root / run / "summary.md").write_text(
            f"# Journey {run}\n\n{table}\n\nThis invocation: {total:.0f} s "
            f"({sum(p.action == 'run' for p in plans)} stages run, {sum(p.action == 'skip' for p in plans)} "
            f"up to date).\n\n```\n{registry.lineage(run)}\n```\n" + (f"\n{scorecard.read_text()}" if scorecard.exists() else ""))
        report = write_report(registry, run)
        ran = [p.stage for p in plans if p.action == "run"]
        view.print(f"journey {run}: {len(ran)} stage(s) run ({', '.join(ran) or 'none: all up to date'}) "
                   f"in {total:.0f} s")
        view.print(f"summary: {registry.root / run / 'summary.md'}")
        view.print(f"report:  {report}")
    return run


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(f"{__doc__}\nconfig keys:\n{describe(JourneyConfig)}")
        return 0

    # `from` is a Python keyword, so the field is from_stage; `from=sft` is the spelling people type.
    argv = [f"from_stage={a.split('=', 1)[1]}" if a.startswith("from=") else a for a in argv]

    def job():
        jc = load_config(JourneyConfig, "journey", None, base=parse_overrides(argv))
        run_journey(jc)
    return run_main(job)


if __name__ == "__main__":
    sys.exit(main())
