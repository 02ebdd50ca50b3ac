"""The interpret stage and the ``journey interpret attention|induction|diff`` commands.

``run_interpret(cfg)`` reads the run's model artifacts (``cfg.models`` that exist in ``cfg.run``) and
writes into the report artifact ``<run>/<stage>`` (kind ``report``, the models as parents):
attention grids + per-layer PNGs + HTML per model (``attention/<model>/``), the induction table and
per-head heatmaps, the phase-change plot over ``cfg.phase_model``'s training snapshots, the
consecutive-stage diffs (residual stream, heads, weights) and the logit lens, all summed up in
``interpret.md`` (the report section) and ``interpret.json``.

The three commands run one analysis on named artifacts and write into ``cfg.out`` (default
``<runs_dir>/_interp/<command>-<artifact>``, not a registered artifact).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from shared.interp import plots, report
from shared.interp.attention import write_attention
from shared.interp.bridge import InterpError, Loaded, encode, load_bridge
from shared.interp.diff import StageDiff, compare, logit_lens
from shared.interp.induction import InductionResult, PhaseChange, measure, phase_change, snapshots
from shared.interp.interpret_config import InterpretConfig
from shared.registry import Registry
from shared.chat_format import render_chat


def _measure(model: Loaded, cfg: InterpretConfig) -> InductionResult:
    return measure(model, cfg.induction_len, cfg.induction_batch, cfg.seed, cfg.induction_threshold,
                   cfg.prev_token_threshold)


def induction_plot(result: InductionResult, name: str, out: Path) -> Path:
    return plots.score_heatmaps({"induction score": result.induction, "previous-token score": result.prev_token},
                                out / f"induction_{name}.png", f"{name}: per-head scores (chance {result.chance:.3f})")


def phase_plot(phase: PhaseChange, name: str, cfg: InterpretConfig, out: Path) -> Path:
    final = phase.results[-1]
    picked = final.heads[:4] or [final.best[:2]]
    per_head = {f"L{l}H{h}": [float(r.induction[l, h]) for r in phase.results] for l, h in picked}
    return plots.phase_change(phase.steps, [r.loss_drop for r in phase.results], [r.best[2] for r in phase.results],
                              per_head, out / "phase_change.png", f"{name}: induction over training",
                              cfg.induction_threshold)


def measure_phase(model: Loaded, final_step: int, cfg: InterpretConfig, out: Path) -> PhaseChange | None:
    """Induction at every training snapshot of ``model`` and at ``final_step``; None without snapshots."""
    points = snapshots(model.path)
    if not points:
        return None
    phase = phase_change(points, model, final_step, cfg.induction_len, cfg.induction_batch, cfg.seed,
                         cfg.induction_threshold, cfg.prev_token_threshold, load=load_bridge)
    phase_plot(phase, model.name, cfg, out)
    return phase


def diff_prompts(model: Loaded, cfg: InterpretConfig) -> dict[str, list[int]]:
    """The fixed prompt set: chat prompts (rendered in the chat format) first, then the plain ones."""
    texts = [render_chat([{"role": "user", "content": m}], add_generation_prompt=True) for m in cfg.chat_prompts]
    return {text: encode(model, text) for text in texts + list(cfg.prompts)}


def stage_diffs(models: list[Loaded], pairs: list[tuple[Loaded, Loaded]], cfg: InterpretConfig,
                out: Path) -> tuple[list[StageDiff], dict]:
    """The ``(before, after)`` diffs and the logit lens of ``models``, with their plots; returns diffs and lens tables."""
    prompts = diff_prompts(models[0], cfg)
    diffs = [compare(a, b, list(prompts.values())) for a, b in pairs]
    if diffs:
        names = {f"{d.a} → {d.b}": d for d in diffs}
        plots.layer_curves({"cosine similarity": {k: d.cosine for k, d in names.items()},
                            "||b - a|| / ||a||": {k: d.distance for k, d in names.items()}},
                           out / "diff_residual.png", "residual stream: how far each stage moved the activations")
        vmax = max(float(d.head_change.max()) for d in diffs)
        plots.score_heatmaps({k: d.head_change for k, d in names.items()}, out / "diff_heads.png",
                             "attention change per head (total variation)", vmax=vmax)
        plots.weight_bars({k: d.weight_change for k, d in names.items()}, out / "diff_weights.png",
                          "relative weight change per matrix")
    tables, curves = {}, {}
    for text in list(prompts)[:cfg.lens_prompts]:
        tables[text] = {}
        for m in models:
            labels, top, prob = logit_lens(m, prompts[text])
            tables[text][m.name] = (labels, [m.tokenizer.decode([t]) for t in top], prob)
        curves[text[-40:]] = {name: row[2] for name, row in tables[text].items()}
    if curves:
        plots.logit_lens(curves, out / "logit_lens.png", "logit lens: p(final answer) read at each layer")
    return diffs, tables


def lineage_pairs(registry, arts: list, models: list[Loaded]) -> list[tuple[Loaded, Loaded]]:
    """``(parent, child)`` for each model whose nearest analysed ancestor is another analysed model
    (what that stage changed); a model with none is compared with the one listed before it."""
    by_id = {a.id: m for a, m in zip(arts, models)}
    pairs = []
    for i, (art, model) in enumerate(zip(arts, models)):
        parent = next((by_id[p.id] for p in registry.ancestors(art) if p.id in by_id), None)
        if parent is None and i:
            parent = models[i - 1]
        if parent is not None:
            pairs.append((parent, model))
    return pairs


def _present(registry, run: str, names: list[str]):
    """The artifacts among ``names`` that exist in ``run`` (never another run's), and the missing names."""
    in_run = {a.stage: a for a in registry.artifacts(run)}
    found, missing = [], []
    for name in names:
        art = registry.resolve(name) if "/" in name else in_run.get(name)
        (found if art is not None else missing).append(art if art is not None else name)
    return found, missing


def run_interpret(cfg: InterpretConfig):
    """The interpret stage (see module docstring); returns the registered report artifact."""
    torch.set_num_threads(cfg.threads)
    registry = Registry(cfg.runs_dir)
    t0 = time.perf_counter()
    arts, missing = _present(registry, cfg.run, cfg.models)
    if not arts:
        raise InterpError(f"none of the models {cfg.models} exist in run {cfg.run!r} under {registry.root}; "
                          "run pretraining first or pass models=[<stage>, ...]")
    out = registry.stage_dir(cfg.run, cfg.stage, overwrite=cfg.overwrite)
    models = [load_bridge(a.dir, a.stage) for a in arts]
    grids = {}
    for m in models:
        write_attention(m, cfg.prompt, out / "attention" / m.name, cfg.layer, cfg.head)
        grids[m.name] = (f"attention/{m.name}", m.n_layers)
    results = {m.name: _measure(m, cfg) for m in models}
    for name, r in results.items():
        induction_plot(r, name, out)
    phase_model = next((m for m in models if m.name == cfg.phase_model), None)
    phase_art = next((a for a in arts if a.stage == cfg.phase_model), None)
    phase = measure_phase(phase_model, int(phase_art.metrics.get("steps", 0)), cfg, out) if phase_model else None
    diffs, lens = stage_diffs(models, lineage_pairs(registry, arts, models), cfg, out)
    note = f"Not in run {cfg.run}: {', '.join(missing)}.\n\n" if missing else ""
    md = "\n".join([f"# Inside the models of {cfg.run}", "", note + f"Models: {', '.join(m.name for m in models)}.", "",
                    report.attention_section(grids, cfg.prompt),
                    report.induction_section(results, cfg.induction_threshold, cfg.prev_token_threshold),
                    report.phase_section(phase, cfg.phase_model, cfg.induction_threshold,
                                         "" if phase_model else f"{cfg.phase_model} is not among the analysed models."),
                    report.diff_section(diffs, cfg.top_heads) if diffs else "",
                    report.lens_section(lens) if lens else ""])
    (out / "interpret.md").write_text(md, encoding="utf-8")
    metrics = _metrics(results, phase, diffs, cfg.induction_threshold)
    (out / "interpret.json").write_text(json.dumps(
        {"induction": {k: r.summary() for k, r in results.items()}, "phase_change": phase.to_dict() if phase else None,
         "diffs": [{"a": d.a, "b": d.b, **d.summary(), "cosine": d.cosine, "distance": d.distance,
                    "weight_change": d.weight_change} for d in diffs], "missing": missing}, indent=1) + "\n")
    return registry.register(cfg.run, cfg.stage, "report", parents=[a.id for a in arts], config=cfg,
                             metrics=metrics, timings={"interpret_s": time.perf_counter() - t0})


def _metrics(results: dict[str, InductionResult], phase: PhaseChange | None, diffs: list[StageDiff],
             threshold: float) -> dict:
    metrics: dict = {}
    for name, r in results.items():
        s = r.summary()
        metrics.update({f"{name}/max_induction_score": s["max_induction_score"], f"{name}/loss_drop": s["loss_drop"],
                        f"{name}/induction_heads": s["induction_heads"]})
    if phase is not None:
        metrics["induction_formed_at_step"] = phase.formed_at(threshold)
    for d in diffs:
        metrics[f"{d.a}->{d.b}/final_cosine"] = d.cosine[-1]
    return metrics


# ---------------------------------------------------------------- the commands
def _out(cfg: InterpretConfig, command: str, *names: str) -> Path:
    if cfg.out:
        return Path(cfg.out)
    slug = "-".join(n.replace("/", "_").replace(":", "_").strip("._") for n in names)
    return Registry(cfg.runs_dir).root / "_interp" / f"{command}-{slug}"


def _load(name: str, cfg: InterpretConfig) -> Loaded:
    art = Registry(cfg.runs_dir).resolve(name, run=cfg.run)
    return load_bridge(art.dir, art.stage)


def attention_command(cfg: InterpretConfig, artifact: str) -> dict:
    """``journey interpret attention <artifact> prompt=...``: the attention PNGs and HTML of one model."""
    out = _out(cfg, "attention", artifact)
    files = write_attention(_load(artifact, cfg), cfg.prompt, out, cfg.layer, cfg.head)
    return {"out": str(out), "files": sorted(p.name for p in files.values())}


def induction_command(cfg: InterpretConfig, artifact: str) -> dict:
    """``journey interpret induction <artifact>``: scores, heatmap, and the phase change if it has snapshots."""
    art = Registry(cfg.runs_dir).resolve(artifact, run=cfg.run)
    model, out = load_bridge(art.dir, art.stage), _out(cfg, "induction", artifact)
    out.mkdir(parents=True, exist_ok=True)
    result = _measure(model, cfg)
    induction_plot(result, model.name, out)
    phase = measure_phase(model, int(art.metrics.get("steps", 0)), cfg, out)
    md = report.induction_section({model.name: result}, cfg.induction_threshold, cfg.prev_token_threshold)
    md += "\n" + report.phase_section(phase, model.name, cfg.induction_threshold)
    (out / "induction.md").write_text(md, encoding="utf-8")
    return {"out": str(out), **result.summary(), "induction_heads": [f"L{l}H{h}" for l, h in result.heads],
            "prev_token_heads": [f"L{l}H{h}" for l, h in result.prev_heads],
            "formed_at_step": phase.formed_at(cfg.induction_threshold) if phase else None}


def diff_command(cfg: InterpretConfig, a: str, b: str) -> dict:
    """``journey interpret diff <a> <b>``: residual, attention and weight changes, logit lens, plots and a table."""
    models, out = [_load(a, cfg), _load(b, cfg)], _out(cfg, "diff", a, b)
    if models[0].name == models[1].name:
        models[0].name, models[1].name = a, b  # same stage name from two runs: keep them apart
    out.mkdir(parents=True, exist_ok=True)
    diffs, lens = stage_diffs(models, [(models[0], models[1])], cfg, out)
    (out / "diff.md").write_text(report.diff_section(diffs, cfg.top_heads) + "\n" + report.lens_section(lens),
                                 encoding="utf-8")
    return {"out": str(out), **diffs[0].summary(), "top_heads": diffs[0].top_heads(cfg.top_heads)}
