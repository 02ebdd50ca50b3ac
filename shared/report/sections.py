"""The report's sections, built from a run's data (``collect``) as document blocks (``doc``).

Headline, lineage, the stages one by one, what each stage changed (the scorecard colour table,
safety and helpfulness, inside the models), quantization and serving speed, environment and wall
time. A section whose stage or file is missing says what is absent and the command that makes it.
"""
from __future__ import annotations

import json
from typing import Any

from shared import stages as stage_table
from shared.report import findings as fnd
from shared.report import table as colour
from shared.report.collect import VARIANT_KINDS, RunData, StageView
from shared.report.doc import (Block, Bullets, Cell, Details, Document, Image, Para, Pre, Section, Subheading, Svg,
                               Table, Tiles)
from shared.report.fmt import duration, is_number, label, megabytes, num, pct, signed, value
from shared.report.lineage_svg import KIND_COLOURS, lineage_svg

#: Config keys that say what a stage read (models, data, tasks), shown under "data".
DATA_KEYS = ("init_from", "tokenizer", "data", "eval_data", "sources", "embedder", "tasks", "models", "variants",
             "quality_text", "reference", "reward_model")
#: Config keys that say how it ran, shown under "settings" (dotted: a key of a section).
SETTING_KEYS = ("model.preset", "method.method", "train.max_steps", "train.batch_size", "train.grad_accum",
                "train.lr", "train.schedule", "train.max_length", "beta", "loss_type", "algorithm", "num_prompts",
                "hard_safety_prompts", "balance_refusals", "samples_per_prompt", "vocab_size", "method", "chunk_chars",
                "limit", "suite_limit", "precision", "num_workers", "use_gpu")
#: Files a section of its own shows, not repeated in the stage's part.
SHOWN_ELSEWHERE = ("scorecard.png",)  # the colour table replaces the scorecard's bar charts


def command_for(stage: str, run: str) -> str:
    """The command that makes ``stage``'s artifact in ``run`` (``journey eval all run=R`` for the scorecard)."""
    spec = stage_table.BY_NAME.get(stage)
    first = spec.usage.split()[0] if spec else ""
    target = " all" if first.startswith("all|") else ""
    return f"`journey {stage}{target} run={run}`"


def absent(what: str, stage: str, run: str) -> Para:
    return Para(f"{what}: run {run} has no `{stage}` artifact. Run {command_for(stage, run)} to get it.", muted=True)


def image(data: RunData, path, alt: str, caption: str = "") -> Image:
    rel = path.relative_to(data.root) if path.is_relative_to(data.root) else path.name
    return Image(path, str(rel).replace("/", "-").replace("\\", "-"), alt, caption)


# --------------------------------------------------------------------------------------------- headline
def headline(data: RunData) -> Section:
    found = fnd.findings(data)
    tiles = [t for f in found for t in f.tiles]
    wall = fnd.wall_tile(data)
    if wall:
        tiles.append(wall)
    blocks: list[Block] = []
    if tiles:
        blocks.append(Tiles(tiles))
    if found:
        blocks.append(Bullets([f.sentence for f in found]))
    else:
        blocks.append(Para("No stage of this run recorded the numbers a headline is made of.", muted=True))
    blocks += [Para(p, muted=True) for p in data.problems]
    return Section("Headline", "headline", blocks)


# ---------------------------------------------------------------------------------------------- lineage
def lineage(data: RunData) -> Section:
    legend = ", ".join(f"{kind}" for kind in KIND_COLOURS if any(v.kind == kind for v in data.stages))
    blocks: list[Block] = [
        Svg(lineage_svg(data), "lineage.svg", f"lineage of run {data.run}"),
        Para(f"{len(data.stages)} artifacts ({legend}); an arrow runs from the artifact a stage read to the one it "
             "made, a light arrow into a report that compared the models it points from.")]
    if data.external_parents:
        blocks.append(Para("Made from artifacts of other runs: " + ", ".join(f"`{p}`" for p in data.external_parents)
                           + "."))
    if data.lineage_text:
        blocks.append(Details("The lineage as text (`journey artifacts`)", [Pre(data.lineage_text)]))
    return Section("Lineage", "lineage", blocks)


# ----------------------------------------------------------------------------------------------- stages
def _config_value(v: Any) -> str:
    if isinstance(v, dict):
        if "source" in v:
            limit = v.get("max_bytes")
            return f"{v['source']}" + (f" (first {megabytes(limit)})" if is_number(limit) else "")
        return ", ".join(f"{k}: {x}" for k, x in v.items() if x not in (None, "", [], {}))
    if isinstance(v, list):
        return ", ".join(str(x) for x in v)
    return str(v)


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(config, dict):
            return None
        config = config.get(part)
    return config


def _described(config: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    out = []
    for key in keys:
        v = _lookup(config, key)
        if v in (None, "", [], {}) or isinstance(v, dict) and key == "method":
            continue
        out.append(f"{key} `{_config_value(v)}`")
    return out


def _timings(view: StageView) -> str:
    parts = [f"{k.removesuffix('_s')} {duration(float(t))}" for k, t in view.artifact.timings.items()
             if is_number(t) and k not in ("wall_s", "total_s")]
    if view.wall_s is None:
        return "It recorded no timings."
    return f"It took {duration(view.wall_s)}" + (f" ({', '.join(parts)})" if len(parts) > 1 else "") + "."


def _is_rows(v: Any) -> bool:
    """A metric that is a table: a non-empty list of dicts (an experiment's rows, one per arm)."""
    return isinstance(v, list) and bool(v) and all(isinstance(row, dict) for row in v)


def stage_part(view: StageView, data: RunData, claimed: set) -> list[Block]:
    spec = stage_table.BY_NAME.get(view.stage)
    blocks: list[Block] = [Subheading(f"{view.stage} · {view.kind}", f"stage-{view.stage}")]
    what = f"{spec.summary[0].upper()}{spec.summary[1:]}." if spec else f"A {view.kind} artifact."
    f = fnd.finding(view, data)
    blocks.append(Para(what + (" " + f.sentence if f else "")))
    facts = []
    read = _described(view.config, DATA_KEYS)
    if view.artifact.parents:
        facts.append("made from " + ", ".join(f"`{p}`" for p in view.artifact.parents))
    if read:
        facts.append("read " + ", ".join(read))
    settings = _described(view.config, SETTING_KEYS)
    if settings:
        facts.append("settings " + ", ".join(settings))
    if view.artifact.data_fingerprint:
        facts.append(f"data fingerprint `{view.artifact.data_fingerprint[:12]}`")
    if facts:
        blocks.append(Para("; ".join(facts) + "."))
    blocks.append(Para(_timings(view)))
    pictures = [p for p in view.images if p not in claimed and p.name not in SHOWN_ELSEWHERE]
    blocks += [image(data, p, f"{view.stage}: {p.stem.replace('_', ' ')}") for p in pictures]
    if any(p in claimed for p in view.images):
        blocks.append(Para("Its pictures are in the sections below.", muted=True))
    shown = [k for k in view.headlines if k in view.metrics]
    if shown:
        blocks.append(Table(["headline metric", "value"], [[label(k), value(k, view.metrics[k])] for k in shown]))
    missing = [k for k in view.headlines if k not in view.metrics]
    if missing:
        blocks.append(Para(f"Not recorded: {', '.join(missing)}.", muted=True))
    scored = [k for k in view.metrics if k.startswith("eval/")]
    tables = {k: v for k, v in view.metrics.items() if k not in shown and _is_rows(v)}
    for key, rows in tables.items():  # an experiment's arms: one row each
        columns = list(dict.fromkeys(c for row in rows for c in row))
        blocks.append(Table(columns, [["–" if row.get(c) is None else value(c, row.get(c)) for c in columns]
                                      for row in rows], caption=f"{view.stage}: {label(key)}"))
    rest = [k for k in view.metrics if k not in shown and k not in scored and k not in tables]
    if rest:
        blocks.append(Details(f"All {len(rest)} other metrics of {view.stage}",
                              [Table(["metric", "value"], [[k, value(k, view.metrics[k])] for k in rest])]))
    if scored:
        blocks.append(Para(f"Its {len(scored)} scorecard metrics (`eval/...`) are in What each stage changed.",
                           muted=True))
    return blocks


def stages(data: RunData, claimed: set) -> Section:
    blocks: list[Block] = []
    variants = [v for v in data.stages if v.kind in VARIANT_KINDS]
    for view in data.stages:
        if view.kind in VARIANT_KINDS:
            continue
        blocks += stage_part(view, data, claimed)
        if view.stage == "quantize" and variants:
            blocks.append(Para("Variants registered as artifacts: " + ", ".join(
                f"`{v.stage}` ({v.kind}" + (f", {megabytes(v.metrics['bytes'])})" if v.has("bytes") else ")")
                for v in variants) + "; compared in Quantization and serving speed."))
    missing = [s.name for s in stage_table.STAGES if s.journey == "default" and data.of_table(s.name) is None]
    if missing:
        blocks.append(Para("Stages of the default journey this run does not have: "
                           + ", ".join(command_for(s, data.run) for s in missing) + ".", muted=True))
    return Section("Stages", "stages", blocks)


# ------------------------------------------------------------------------------------ what each changed
def scorecard_part(data: RunData) -> list[Block]:
    blocks: list[Block] = [Subheading("The scorecard", "scorecard")]
    card = data.scorecard
    if not card or not card.get("metrics"):
        return blocks + [absent("No scorecard", "eval", data.run)]
    lineage = [v.id for v in data.stages]
    models = colour.ordered_models(card, lineage)
    parents = card.get("parents") or {}
    told = []
    for a in models:
        if parents.get(a):
            t = colour.tally(card, a)
            told.append(f"{a.split('/', 1)[-1]} against {parents[a].split('/', 1)[-1]}: better on {t['better']}, "
                        f"worse on {t['worse']}, level on {t['same']}")
    blocks.append(Para(f"Every model of the run on the same {len(card['metrics'])} metrics. Each cell: the value and, "
                       "beside it, the change against the model it was made from; green is better, red is worse "
                       "(↑ higher is better, ↓ lower is better), faint within 1.96 standard errors (maybe noise)."))
    if told:
        blocks.append(Bullets(told))
    blocks.append(colour.scorecard_table(card, lineage))
    sizes = colour.sample_sizes(card)
    if sizes:
        blocks.append(Para(f"Sample sizes: {sizes}.", muted=True))
    for a, reasons in (card.get("skipped") or {}).items():
        for task, why in reasons.items():
            blocks.append(Para(f"{task} was skipped for {a}: {why}", muted=True))
    return blocks


#: A reply-level rate or score where lower is better (none of the comparison files' columns is one
#: today; the scorecard's own list decides for the names it shares).
def _lower_better(metric: str, card: dict[str, Any] | None) -> bool:
    names = (card or {}).get("lower_is_better", [])
    return any(m.rsplit("/", 1)[-1] == metric for m in names)


#: The rows of a before/after table: (comparison file, summary key, what it counts).
BEFORE_AFTER_ROWS = (("safety", "refusal_rate_harmful", "harmful prompts refused"),
                     ("safety", "answer_rate_helpful", "helpful prompts answered"),
                     ("safety_hard", "refusal_rate_harmful", "hard set: indirect harmful prompts refused"),
                     ("safety_hard", "answer_rate_helpful", "hard set: borderline prompts answered"),
                     ("heldout", "exact_match", "held-out instructions: exact match"),
                     ("heldout", "format_ok", "held-out instructions: chat format ok"),
                     ("heldout", "mean_score", "held-out instructions: mean score"))


def _model_labels(view: StageView | None, models: list[str]) -> dict[str, str]:
    """SFT calls its two models ``base`` and ``tuned``: name them by the artifacts they are."""
    names = {"tuned": view.stage if view else "tuned"}
    if view and view.config.get("init_from"):
        names["base"] = f"{view.config['init_from']} (base)"
    return {m: names.get(m, m) for m in models}


def before_after(found: dict[str, dict[str, Any]], view: StageView | None, card: dict[str, Any] | None) -> list[Block]:
    """One table: every model the stage compared (columns, oldest first) on the safety and held-out rates."""
    models = list(dict.fromkeys(m for summaries in found.values() for m in summaries))
    labels = _model_labels(view, models)
    rows, detail_rows = [], []
    for file, key, what in BEFORE_AFTER_ROWS:
        summaries = found.get(file) or {}
        if any(is_number(s.get(key)) for s in summaries.values()):
            rows.append((what, file, key))
    heldout = found.get("heldout") or {}
    extra = sorted({k for s in heldout.values() for k in s if k.startswith("acc_") and is_number(s[k])})
    detail_rows = [(f"held-out {label(k)}", "heldout", k) for k in extra]

    def table(spec: list[tuple[str, str, str]]) -> Table:
        out = []
        for what, file, key in spec:
            summaries = found.get(file) or {}
            cells: list[str | Cell] = [what]
            prev = None
            for m in models:
                v = (summaries.get(m) or {}).get(key)
                if not is_number(v):
                    cells.append(Cell("-"))
                    continue
                t = None
                if is_number(prev):
                    t = "same" if v == prev else "better" if (v < prev) == _lower_better(key, card) else "worse"
                cells.append(Cell(num(v, 3), sub=signed(v - prev) if is_number(prev) else "", tone=t))
                prev = v
            out.append(cells)
        sizes = {f: {m: s.get("n") for m, s in (found.get(f) or {}).items()} for f in found}
        head = [Cell("", sub="; ".join(f"{f}: n={num(next(iter(n.values())))}" for f, n in sizes.items() if n
                                       and is_number(next(iter(n.values())))))]
        return Table(head + [Cell(labels[m]) for m in models], out, css="scorecard")

    blocks: list[Block] = [table(rows)] if rows else []
    if detail_rows:
        blocks.append(Details("Held-out accuracy per task", [table(detail_rows)]))
    return blocks


def safety_part(data: RunData) -> list[Block]:
    blocks: list[Block] = [Subheading("Safety and helpfulness, before and after", "safety")]
    if not data.comparisons:
        return blocks + [absent("No before/after comparison", "dpo", data.run)]
    blocks.append(Para("Each post-training stage puts the models it came from and itself on held-out instructions and "
                       "on safety prompts (harmful ones it should refuse, helpful ones it should answer); each cell "
                       "against the model to its left."))
    for stage, found in data.comparisons.items():
        view = data.get(stage)
        f = fnd.finding(view, data) if view else None
        if f:
            blocks.append(Para(f.sentence))
        blocks += before_after(found, view, data.scorecard)
    return blocks


def interpret_part(data: RunData, claimed: set) -> list[Block]:
    blocks: list[Block] = [Subheading("Inside the models", "interpret")]
    view = data.get("interpret")
    found = data.interpret
    if view is None or not found:
        return blocks + [absent("No interpretability", "interpret", data.run)]
    folder = view.artifact.dir
    f = fnd.interpret(view, data)
    if f:
        blocks.append(Para(f.sentence))
    induction = found.get("induction") or {}
    if induction:
        rows = []
        for model, r in induction.items():
            chance = r.get("chance")
            ratio = r["max_induction_score"] / chance if is_number(r.get("max_induction_score")) and is_number(
                chance) and chance else None
            rows.append([model, str(r.get("max_induction_head", "-")), num(r.get("max_induction_score"), 3),
                         f"{ratio:.1f}×" if ratio else "-", num(r.get("induction_heads")),
                         num(r.get("prev_token_heads")), signed(r["loss_drop"]) if is_number(r.get("loss_drop")) else "-"])
        blocks.append(Table(["model", "strongest induction head", "score", "vs chance", "induction heads",
                             "previous-token heads", "loss drop on the repeat (nats)"], rows))
    diffs = found.get("diffs") or []
    if diffs:
        rows = []
        for d in diffs:
            changes = d.get("weight_change") or {}
            top = max(changes, key=changes.get) if changes else None
            rows.append([f"{d.get('a')} → {d.get('b')}", num(d.get("final_cosine"), 3), num(d.get("final_distance"), 3),
                         f"{d.get('most_changed_head', '-')} ({num(d.get('most_changed_head_tv'), 3)})",
                         num(d.get("mean_weight_change"), 3), f"{top} ({num(changes[top], 3)})" if top else "-"])
        blocks.append(Para("What each stage changed inside: the residual stream's last-layer cosine similarity "
                           "and relative distance on the same prompts, the head whose attention moved most "
                           "(total variation) and the relative change of the weights."))
        blocks.append(Table(["stage", "cosine", "distance", "head changed most", "mean weight change",
                             "largest weight change"], rows))
    if found.get("missing"):
        blocks.append(Para(f"Not in the run, so not analysed: {', '.join(found['missing'])}.", muted=True))
    main = [folder / n for n in ("phase_change.png", "diff_residual.png", "diff_heads.png", "diff_weights.png",
                                 "logit_lens.png") if (folder / n).exists()]
    blocks += [image(data, p, f"interpret: {p.stem.replace('_', ' ')}") for p in main]
    more = sorted(folder.glob("induction_*.png")) + sorted(folder.glob("attention/*/grid.png"))
    if more:
        blocks.append(Details(f"Per-model induction scores and attention grids ({len(more)} pictures)",
                              [image(data, p, f"interpret: {p.relative_to(folder).as_posix()}") for p in more]))
    claimed.update(view.images)
    blocks.append(Para(f"The full analysis (per-layer attention, the logit lens tables): `{folder / 'interpret.md'}`.",
                       muted=True))
    return blocks


def changes(data: RunData, claimed: set) -> Section:
    return Section("What each stage changed", "what-each-stage-changed",
                   scorecard_part(data) + safety_part(data) + interpret_part(data, claimed))


# ----------------------------------------------------------------------------------------- quantization
def quantization(data: RunData, claimed: set) -> Section:
    view = data.get("quantize")
    result = data.quantize
    if view is None or not result or not result.get("rows"):
        return Section("Quantization and serving speed", "quantization-and-serving-speed",
                       [absent("No quantization measured", "quantize", data.run)])
    rows = result["rows"]
    blocks: list[Block] = []
    f = fnd.quantize(view, data)
    if f:
        blocks.append(Para(f.sentence))
    setup = []
    if is_number(result.get("prompt_tokens")) and is_number(result.get("new_tokens")):
        setup.append(f"every variant got the same {num(result['prompt_tokens'])}-token prompt and made "
                     f"{num(result['new_tokens'])} new tokens, batch 1")
    if is_number(result.get("threads")):
        setup.append(f"{num(result['threads'])} CPU threads")
    ref = (result.get("reference") or {}).get("ppl")
    if is_number(ref):
        setup.append(f"quality on held-out {result.get('quality_text', '')} text against FP32 (perplexity {ref:.2f})")
    if setup:
        blocks.append(Para("Measured as served: " + "; ".join(setup) + "."))
    levels = sorted({c for r in rows.values() for c in (r.get("concurrency") or {})}, key=int)
    fastest = max((r.get("decode_tokens_per_s") or 0 for r in rows.values()), default=0) or 1
    fp32 = rows.get("fp32", {}).get("bytes")
    hf = rows.get("hf-generate-fp32", {}).get("decode_tokens_per_s")
    table_rows = []
    for name, r in rows.items():
        speed = r.get("decode_tokens_per_s")
        table_rows.append([
            name, str(r.get("runtime", "-")),
            megabytes(r["bytes"]) if is_number(r.get("bytes")) else "-",
            f"{fp32 / r['bytes']:.2f}×" if is_number(fp32) and is_number(r.get("bytes")) and r["bytes"] else "-",
            num((r["ttft_s"] or 0) * 1e3, 3) if is_number(r.get("ttft_s")) else "-",
            num(r.get("prefill_tokens_per_s"), 4),
            Cell(num(speed, 4), bar=speed / fastest if is_number(speed) else None),
            f"{speed / hf:.2f}×" if is_number(speed) and is_number(hf) and hf else "-",
            *[num((r.get("concurrency") or {}).get(c), 4) for c in levels],
            signed(r["ppl_delta"]) if is_number(r.get("ppl_delta")) else "-",
            pct(r["top1_agreement"]) if is_number(r.get("top1_agreement")) else "-"])
    blocks.append(Table(["variant", "runtime", "size", "smaller than FP32", "TTFT (ms)", "prefill tok/s",
                         "decode tok/s", "vs HF generate()", *[f"{c} requests tok/s" for c in levels],
                         "Δ perplexity", "top-1 agreement"], table_rows))
    peers = sorted({str(r.get("runtime")) for r in rows.values() if r.get("runtime") not in (None, "engine")})
    if peers:
        blocks.append(Para("Peers measured beside our engine: " + ", ".join(peers) + ". Concurrent-request columns "
                           "are the engine's aggregate tokens/s with that many requests sharing each step.",
                           muted=True))
    pictures = [view.artifact.dir / n for n in ("variants.png", "throughput_vs_batch.png", "prefill_vs_decode.png")
                if (view.artifact.dir / n).exists()]
    blocks += [image(data, p, f"quantize: {p.stem.replace('_', ' ')}") for p in pictures]
    claimed.update(view.images)
    return Section("Quantization and serving speed", "quantization-and-serving-speed", blocks)


# ------------------------------------------------------------------------------------------ environment
ENV_FIELDS = (("hostname", "host"), ("platform", "OS"), ("python", "Python"), ("cpu_count", "CPUs"),
              ("memory_bytes", "memory"), ("gpus", "GPUs"))


def _env_value(key: str, v: Any) -> str:
    if key == "memory_bytes":
        return f"{v / 2**30:.1f} GiB" if is_number(v) else "-"
    if key == "gpus":
        return ", ".join(v) if v else "none"
    return "-" if v is None else str(v)


def _timed_with(view: StageView) -> str:
    """For an artifact without timings: the stage that made it as a side product (a quantize variant)."""
    maker = view.config.get("stage")
    return f"timed with {maker}" if maker and maker != view.stage else "no timings recorded"


def environment(data: RunData) -> Section:
    blocks: list[Block] = []
    groups: dict[str, list[StageView]] = {}
    unrecorded = []
    for view in data.stages:
        env = view.artifact.environment
        if env:
            groups.setdefault(json.dumps(env, sort_keys=True), []).append(view)
        else:
            unrecorded.append(view.stage)
    if groups:
        envs = [json.loads(k) for k in groups]
        heads = ["", *(("every stage" if len(groups) == 1 and not unrecorded else
                        ", ".join(v.stage for v in views)) for views in groups.values())]
        rows = [[name, *(_env_value(key, e.get(key)) for e in envs)] for key, name in ENV_FIELDS]
        packages = sorted({p for e in envs for p in (e.get("versions") or {})})
        rows += [[p, *((e.get("versions") or {}).get(p) or "not installed" for e in envs)] for p in packages]
        blocks.append(Table(heads, rows))
    if unrecorded:
        blocks.append(Para(f"Not recorded for {', '.join(unrecorded)}: made before artifacts recorded where they "
                           "ran. Rerun a stage to record it.", muted=True))
    commits: dict[str, list[str]] = {}
    for view in data.stages:
        commits.setdefault(view.artifact.git_commit or "unknown", []).append(view.stage)
    if len(commits) == 1:
        blocks.append(Para(f"Git commit `{next(iter(commits))}` for every stage."))
    else:
        blocks.append(Para("Git commits: " + "; ".join(f"`{c}` ({', '.join(s)})" for c, s in commits.items()) + "."))
    total, n = fnd.total_wall(data)
    longest = max((v.wall_s for v in data.stages if v.wall_s is not None), default=0) or 1
    rows = []
    for view in data.stages:
        parts = ", ".join(f"{k.removesuffix('_s')} {duration(float(t))}" for k, t in view.artifact.timings.items()
                          if is_number(t) and k not in ("wall_s", "total_s"))
        rows.append([view.stage, view.kind,
                     Cell(duration(view.wall_s), bar=view.wall_s / longest) if view.wall_s is not None else
                     Cell("-", title="no timings recorded"),
                     parts if view.wall_s is not None else _timed_with(view), view.artifact.created_at[:19].replace("T", " ")])
    rows.append([Cell("total"), "", Cell(duration(total)), f"{n} stages timed", ""])
    blocks.append(Para(f"Wall time of every stage, {duration(total)} in all (the stages' own timings, without the "
                       "time between them)."))
    blocks.append(Table(["stage", "kind", "wall time", "parts", "finished (UTC)"], rows))
    return Section("Environment and wall time", "environment-and-wall-time", blocks)


# ----------------------------------------------------------------------------------------------- report
def document(data: RunData) -> Document:
    """The whole report of ``data``'s run, in reading order."""
    claimed: set = set()  # pictures a section of their own shows (filled before the stages are laid out)
    what = changes(data, claimed)
    quant = quantization(data, claimed)
    final = data.stages[-1].artifact.created_at[:19].replace("T", " ")
    subtitle = f"{len(data.stages)} artifacts under {data.root}, the last finished {final} UTC."
    return Document(f"The journey of run {data.run}", subtitle,
                    [headline(data), lineage(data), stages(data, claimed), what, quant, environment(data)])
