"""The report's sentences: what each stage achieved, written from its numbers.

One function per kind of stage reads its artifact's metrics (and the stage files ``collect`` read)
and returns a ``Finding``: a sentence and the big numbers for the headline. Every figure and every
direction word ("lowered", "raised") comes from the values; a function whose numbers are missing
returns ``None`` and the stage falls back to listing its headline metrics (``generic``), so a run
made with other presets, or with a stage missing, still gets only true sentences.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.report.collect import RunData, StageView
from shared.report.fmt import count, duration, is_number, label, megabytes, num, pct, signed


@dataclass
class Finding:
    stage: str
    sentence: str  # starts with the stage name in bold
    tiles: list[tuple[str, str]] = field(default_factory=list)


def _moved(before: float, after: float) -> str:
    return "lowered" if after < before else "raised" if after > before else "kept"


def _source(config: dict[str, Any], key: str = "data") -> str:
    """What a stage trained on, as its config names it (a source spec, an artifact, a dataset)."""
    data = config.get(key)
    if isinstance(data, dict):
        data = data.get("source") or data.get("general")
    return f"`{data}`" if data else ""


def pretraining(v: StageView, data: RunData) -> Finding | None:
    m = v.metrics
    if not v.has("initial_val_loss", "val_loss"):
        return None
    a, b = m["initial_val_loss"], m["val_loss"]
    on = f" on {_source(v.config)}" if _source(v.config) else ""
    text = f"**{v.stage}**{on} {_moved(a, b)} held-out loss from {a:.3f} to {b:.3f} nats"
    if v.has("val_bpb"):
        text += f" ({m['val_bpb']:.3f} bits per byte)"
    if v.has("steps", "tokens"):
        text += f" in {num(m['steps'])} steps over {count(m['tokens'])} tokens"
    if v.has("tokens_per_s"):
        text += f", {count(m['tokens_per_s'])} tokens/s"
    if v.has("initial_general_loss", "general_loss"):
        c, d = m["initial_general_loss"], m["general_loss"]
        general = _source(v.config.get("eval_data") or {}, "general")
        text += (f"; on general text{' (' + general + ')' if general else ''} loss went from {c:.3f} to {d:.3f} "
                 + (f"(it forgot some: {signed(d - c)})" if d > c else f"(it improved there too: {signed(d - c)})"))
    return Finding(v.stage, text + ".", [(f"{v.stage} val loss", f"{a:.3f} → {b:.3f}")])


def sft(v: StageView, data: RunData) -> Finding | None:
    m = v.metrics
    if not v.has("exact_match"):
        return None
    em = m["exact_match"]
    parts = [f"held-out instruction exact match {pct(m['base_exact_match'])} → {pct(em)}" if v.has("base_exact_match")
             else f"held-out instruction exact match {pct(em)}"]
    if v.has("base_format_ok", "format_ok"):
        parts.append(f"replies in the chat format {pct(m['base_format_ok'], 0)} → {pct(m['format_ok'], 0)}")
    if v.has("first_eval_loss", "eval_loss"):
        parts.append(f"eval loss {m['first_eval_loss']:.3f} → {m['eval_loss']:.3f}")
    on = _source(v.config)
    size = f" ({num(m['n_train'])} examples" + (f", {num(m['steps'])} steps)" if v.has("steps") else ")") \
        if v.has("n_train") else ""
    tile = f"{pct(m['base_exact_match'])} → {pct(em)}" if v.has("base_exact_match") else pct(em)
    return Finding(v.stage, f"**{v.stage}**{' on ' + on if on else ''}{size}: " + "; ".join(parts) + ".",
                   [(f"{v.stage} exact match", tile)])


def prefs(v: StageView, data: RunData) -> Finding | None:
    m = v.metrics
    if not v.has("train_pairs"):
        return None
    text = f"**{v.stage}** made {num(m['train_pairs'])} preference pairs"
    if v.has("train_prompts"):
        text += f" from {num(m['train_prompts'])} prompts"
    if v.config.get("init_from"):
        text += f" sampled from `{v.config['init_from']}`"
    if v.has("heldout_pairs"):
        text += f", plus {num(m['heldout_pairs'])} held out"
    if v.has("train_mean_margin"):
        text += f"; mean score margin chosen − rejected {m['train_mean_margin']:.3f}"
    if v.has("train_pairs_reference_chosen"):
        text += f"; {num(m['train_pairs_reference_chosen'])} fell back to the reference answer"
    return Finding(v.stage, text + ".", [("preference pairs", num(m["train_pairs"]))])


def _compared_with(m: dict[str, Any]) -> str | None:
    """The earlier model a post-training stage compared itself with (``heldout_win_rate_vs_<old>``)."""
    return next((k.removeprefix("heldout_win_rate_vs_") for k in m if k.startswith("heldout_win_rate_vs_")), None)


def posttraining(v: StageView, data: RunData) -> Finding | None:
    """DPO, RL: the new policy against the one it started from, on held-out prompts and safety prompts."""
    m = v.metrics
    old = _compared_with(m)
    if old is None or not v.has(f"heldout_win_rate_vs_{old}"):
        return None
    parts = []
    if v.has(f"heldout_{old}_exact_match", "heldout_exact_match"):
        parts.append(f"held-out exact match {pct(m[f'heldout_{old}_exact_match'])} ({old}) → "
                     f"{pct(m['heldout_exact_match'])}")
    wtl = m.get(f"heldout_wins_ties_losses_vs_{old}")
    record = (f"{wtl[0]} wins, {wtl[1]} ties, {wtl[2]} losses, " if isinstance(wtl, list) and len(wtl) == 3 else "")
    parts.append(f"its replies against {old}'s: {record}win rate {pct(m[f'heldout_win_rate_vs_{old}'])}")
    if v.has(f"safety_{old}_refusal_rate_harmful", "safety_refusal_rate_harmful"):
        parts.append(f"harmful prompts refused {pct(m[f'safety_{old}_refusal_rate_harmful'], 0)} → "
                     f"{pct(m['safety_refusal_rate_harmful'], 0)}")
    if v.has(f"safety_{old}_answer_rate_helpful", "safety_answer_rate_helpful"):
        parts.append(f"helpful prompts answered {pct(m[f'safety_{old}_answer_rate_helpful'], 0)} → "
                     f"{pct(m['safety_answer_rate_helpful'], 0)}")
    if v.has("last_eval_rewards_accuracies"):
        parts.append(f"implicit reward ranks {pct(m['last_eval_rewards_accuracies'])} of held-out pairs right")
    return Finding(v.stage, f"**{v.stage}**: " + "; ".join(parts) + ".",
                   [(f"{v.stage} win rate vs {old}", pct(m[f"heldout_win_rate_vs_{old}"]))])


def reward(v: StageView, data: RunData) -> Finding | None:
    if not v.has("eval_accuracy"):
        return None
    acc = v.metrics["eval_accuracy"]
    return Finding(v.stage, f"**{v.stage}**: the reward model orders {pct(acc)} of held-out pairs correctly.",
                   [("reward model accuracy", pct(acc))])


def quantize(v: StageView, data: RunData) -> Finding | None:
    rows = (data.quantize or {}).get("rows") or {}
    timed = {n: r for n, r in rows.items() if is_number(r.get("decode_tokens_per_s"))}
    sized = {n: r for n, r in rows.items() if is_number(r.get("bytes")) and n != "hf-generate-fp32"}
    if not timed or not sized:
        return None
    fastest = max(timed, key=lambda n: timed[n]["decode_tokens_per_s"])
    smallest = min(sized, key=lambda n: sized[n]["bytes"])
    speed = timed[fastest]["decode_tokens_per_s"]
    asked = v.config.get("variants") or list(rows)  # the peers (HF generate()) are rows but not variants
    made = [n for n in rows if n in asked]
    text = f"**{v.stage}** measured {len(made)} variants of `{data.quantize.get('parent', '?')}`: {fastest} decodes " \
           f"fastest at {num(speed)} tokens/s"
    peer = rows.get("hf-generate-fp32", {}).get("decode_tokens_per_s")
    if is_number(peer) and peer > 0 and fastest != "hf-generate-fp32":
        text += f" ({speed / peer:.1f}× HF generate()'s {num(peer)})"
    s = sized[smallest]
    text += f"; {smallest} is the smallest at {megabytes(s['bytes'])}"
    fp32 = rows.get("fp32", {}).get("bytes")
    if is_number(fp32) and s["bytes"] and smallest != "fp32":
        text += f" ({fp32 / s['bytes']:.1f}× smaller than FP32)"
    quality = []
    if is_number(s.get("ppl_delta")):
        quality.append(f"perplexity {signed(s['ppl_delta'])} against FP32")
    if is_number(s.get("top1_agreement")):
        quality.append(f"the same top-1 token as FP32 {pct(s['top1_agreement'])} of the time")
    if quality:
        text += ", with " + " and ".join(quality)
    return Finding(v.stage, text + ".", [("fastest decode", f"{fastest}: {num(speed)} tok/s"),
                                         ("smallest", f"{smallest}: {megabytes(s['bytes'])}")])


def index(v: StageView, data: RunData) -> Finding | None:
    m = v.metrics
    if not v.has("chunks"):
        return None
    text = f"**{v.stage}** embedded {num(m['chunks'])} chunks"
    if v.has("documents"):
        text += f" of {num(m['documents'])} documents"
    sources = v.config.get("sources")
    if sources:
        text += " from " + ", ".join(f"`{s}`" for s in sources)
    if v.config.get("embedder"):
        text += f" with `{v.config['embedder']}`"
    if v.has("chunks_per_s"):
        text += f" ({m['chunks_per_s']:.1f} chunks/s)"
    return Finding(v.stage, text + ".", [("retrieval index", f"{num(m['chunks'])} chunks")])


def better(card: dict[str, Any], metric: str, new: float, old: float) -> int:
    """+1 when ``new`` is better than ``old`` on ``metric`` (the scorecard says which way is better), -1 worse, 0 tie."""
    if new == old:
        return 0
    lower = metric in card.get("lower_is_better", [])
    return 1 if (new < old) == lower else -1


def scorecard(v: StageView, data: RunData) -> Finding | None:
    card = data.scorecard
    if not card or not card.get("artifacts") or not card.get("metrics"):
        return None
    names = card["artifacts"]
    models = {s.id: s for s in data.stages}
    trained = [n for n in names if n in models and models[n].kind == "hf-model"] or names
    first, final = trained[0], trained[-1]
    text = f"**{v.stage}** put {len(names)} models on {len(card['metrics'])} metrics"
    tiles = []
    if first != final:
        tally = [better(card, m, row[final], row[first]) for m, row in card["metrics"].items()
                 if is_number(row.get(final)) and is_number(row.get(first))]
        wins, losses = tally.count(1), tally.count(-1)
        short = [n.split("/", 1)[-1] for n in (first, final)]
        text += (f"; {short[1]} is better than {short[0]} on {wins} of them, worse on {losses} "
                 f"and level on {len(tally) - wins - losses}")
        tiles.append((f"{short[1]} vs {short[0]}", f"better on {wins} of {len(tally)} metrics"))
    return Finding(v.stage, text + ".", tiles)


def interpret(v: StageView, data: RunData) -> Finding | None:
    found = data.interpret or {}
    induction = {k: r for k, r in (found.get("induction") or {}).items() if is_number(r.get("max_induction_score"))}
    if not induction:
        return None
    best = max(induction, key=lambda k: induction[k]["max_induction_score"])
    r = induction[best]
    text = f"**{v.stage}**: the strongest induction head is {r.get('max_induction_head', '?')} of {best} at " \
           f"{r['max_induction_score']:.3f}"
    if is_number(r.get("chance")) and r["chance"] > 0:
        text += f" ({r['max_induction_score'] / r['chance']:.1f}× chance)"
    threshold = v.config.get("induction_threshold")
    formed = v.metrics.get("induction_formed_at_step")
    phase = found.get("phase_change") or []
    tile = None
    if is_number(formed):
        text += f"; induction heads formed at step {num(formed)} of {v.config.get('phase_model', 'the phase model')}"
        tile = f"formed at step {num(formed)}"
    elif phase and is_number(threshold):
        last = phase[-1].get("step")
        text += f"; no head of {v.config.get('phase_model', 'the phase model')} reached {threshold} by step {num(last)}"
        tile = f"none above {threshold} by step {num(last)}"
    diffs = [d for d in found.get("diffs") or [] if is_number(d.get("final_cosine"))]
    if diffs:
        moved = min(diffs, key=lambda d: d["final_cosine"])
        text += f"; {moved['a']} → {moved['b']} changed the model most (last-layer cosine {moved['final_cosine']:.3f}"
        text += f", mean weight change {moved['mean_weight_change']:.3f})" if is_number(
            moved.get("mean_weight_change")) else ")"
    return Finding(v.stage, text + ".", [("induction heads", tile)] if tile else [])


def tokenizer(v: StageView, data: RunData) -> Finding | None:
    m = v.metrics
    if not v.has("vocab_size"):
        return None
    text = f"**{v.stage}** learned a {num(m['vocab_size'])}-token vocabulary"
    if v.has("n_special_tokens"):
        text += f" ({num(m['n_special_tokens'])} special tokens)"
    if v.has("corpus_bytes"):
        text += f" from {count(m['corpus_bytes'])}B of text"
    rates = [(k.removeprefix("chars_per_token_"), m[k]) for k in m if k.startswith("chars_per_token_") and v.has(k)]
    if rates:
        text += "; characters per token: " + ", ".join(f"{lang} {rate:.2f}" for lang, rate in rates)
    return Finding(v.stage, text + ".", [("vocabulary", f"{num(m['vocab_size'])} tokens")])


def generic(v: StageView, data: RunData) -> Finding | None:
    """A stage with no sentence of its own (or whose numbers are missing): its headline metrics as they are."""
    shown = [f"{label(k)} {num(v.metrics[k])}" for k in v.headlines if v.has(k)]
    if not shown:
        return None
    return Finding(v.stage, f"**{v.stage}**: " + ", ".join(shown) + ".")


#: The sentence of each stage of the table (by stage name); anything else gets ``generic``.
BY_STAGE: dict[str, Callable[[StageView, RunData], Finding | None]] = {
    "tokenizer": tokenizer, "pretrain": pretraining, "cpt": pretraining, "import": pretraining, "sft": sft,
    "finetune": sft, "prefs": prefs, "dpo": posttraining, "rl": posttraining, "reward": reward,
    "quantize": quantize, "index": index, "eval": scorecard, "interpret": interpret}


def finding(v: StageView, data: RunData) -> Finding | None:
    """The stage's sentence, from its own builder or, failing that, its headline metrics."""
    build = BY_STAGE.get(v.stage)
    return (build(v, data) if build else None) or generic(v, data)


def findings(data: RunData) -> list[Finding]:
    """A finding per artifact that has one (quantize variants are told by the quantize stage), in lineage order."""
    out = [finding(v, data) for v in data.stages if v.kind not in ("quantized", "gguf")]
    return [f for f in out if f is not None]


def total_wall(data: RunData) -> tuple[float, int]:
    """The sum of the stages' wall times and how many stages recorded one."""
    timed = [v.wall_s for v in data.stages if v.wall_s is not None]
    return sum(timed), len(timed)


def wall_tile(data: RunData) -> tuple[str, str] | None:
    total, n = total_wall(data)
    return ("wall time", f"{duration(total)} over {n} stages") if n else None
