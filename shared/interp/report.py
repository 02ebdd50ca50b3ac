"""The interpret report as markdown: tables and the plots the stage wrote, with a sentence of reading each.

Formatting only; ``stage`` measures and draws. Every function returns markdown text.
"""
from __future__ import annotations

from shared.interp.diff import StageDiff
from shared.interp.induction import LENGTH_STEPS, InductionResult, PhaseChange


def _heads(heads: list[tuple[int, int]], scores) -> str:
    return ", ".join(f"L{l}H{h} ({float(scores[l, h]):.2f})" for l, h in heads) or "none"


def _code(text: str) -> str:
    """``text`` as inline code that survives a markdown table cell."""
    return "`" + repr(text)[1:-1].replace("`", "'").replace("|", "\\|") + "`"


def attention_section(grids: dict[str, tuple[str, int]], prompt: str) -> str:
    """``grids[model] = (folder relative to the report, number of layers)``."""
    lines = ["## Attention patterns", "", f"Prompt: {_code(prompt)}. Each grid shows every head (rows: layers, "
             "columns: heads); the per-layer PNGs carry the tokens on the axes, the HTML page is interactive.", ""]
    for name, (rel, n_layers) in grids.items():
        layers = " ".join(f"[layer {l}]({rel}/layer_{l}.png)" for l in range(n_layers))
        lines += [f"### {name}", "", f"![{name} attention]({rel}/grid.png)", "",
                  f"[interactive page]({rel}/attention.html) · {layers}", ""]
    return "\n".join(lines)


def induction_section(results: dict[str, InductionResult], threshold: float, prev_threshold: float) -> str:
    any_result = next(iter(results.values()))
    lengths = ", ".join(str(any_result.seq_len + step) for step in LENGTH_STEPS)
    lines = ["## Induction and previous-token heads", "",
             f"Random tokens repeated twice ({lengths} ids, then the same again), every figure the mean over the "
             "three lengths, so a head that attends a fixed distance back cannot pass for an induction head. "
             "Induction score: mean attention "
             "from a token to the one after its previous occurrence; previous-token score: to the token just before. "
             f"A head attending uniformly scores {any_result.chance:.3f} (chance). Listed: induction heads above "
             f"{threshold}, previous-token heads above {prev_threshold}. Loss drop: loss on the first copy minus "
             "loss on the second (nats); copying is the only way to lower it.", "",
             "| model | best induction head | induction heads | previous-token heads | loss 1st half | loss 2nd half "
             "| loss drop |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        layer, head, score = r.best
        lines.append(f"| {name} | L{layer}H{head} {score:.3f} ({score / r.chance:.1f}x chance) | "
                     f"{_heads(r.heads, r.induction)} | {_heads(r.prev_heads, r.prev_token)} | "
                     f"{r.loss_first_half:.2f} | {r.loss_second_half:.2f} | {r.loss_drop:+.2f} |")
    lines += [""] + [f"![{name} induction scores](induction_{name}.png)" for name in results] + [""]
    return "\n".join(lines)


def phase_section(phase: PhaseChange | None, model: str, threshold: float, note: str = "") -> str:
    lines = ["## When induction heads form", ""]
    if phase is None:
        return "\n".join(lines + [note or f"No training snapshots of {model}: pretrain with train.snapshot_every > 0.", ""])
    formed = phase.formed_at(threshold)
    last = phase.results[-1]
    verdict = (f"A head crosses {threshold} at step {formed} and stays above it: induction heads formed there, and "
               "the in-context loss drop rises with them." if formed is not None else
               f"No head reached {threshold} by step {phase.steps[-1]} (best {last.best[2]:.3f}, chance "
               f"{last.chance:.3f}): this model has not formed induction heads yet; more training (tokens) is "
               "what makes them appear.")
    lines += [f"{model}'s training snapshots on the same repeated sequences. {verdict}", "",
              "![phase change](phase_change.png)", "",
              "| step | best induction head | score | loss drop |", "|---|---|---|---|"]
    for step, r in zip(phase.steps, phase.results):
        layer, head, score = r.best
        lines.append(f"| {step} | L{layer}H{head} | {score:.3f} | {r.loss_drop:+.2f} |")
    return "\n".join(lines + [""])


def diff_section(diffs: list[StageDiff], top: int) -> str:
    lines = ["## What each stage changed", "",
             "Same prompts through both models. Per residual-stream layer: cosine similarity and "
             "||b - a|| / ||a|| of the activations; per head: total-variation distance between the attention "
             "patterns (0 = same, 1 = disjoint); per matrix: ||W_b - W_a|| / ||W_a||.", "",
             "![residual stream](diff_residual.png)", "", "![heads](diff_heads.png)", "", "![weights](diff_weights.png)",
             "", "| stage | cosine (last layer) | distance (last layer) | heads changed most | mean weight change | "
             "largest weight change |", "|---|---|---|---|---|---|"]
    for d in diffs:
        s = d.summary()
        name, value = max(d.weight_change.items(), key=lambda kv: kv[1])
        heads = ", ".join(f"{h} ({v:.3f})" for h, v in d.top_heads(top))
        lines.append(f"| {d.a} → {d.b} | {s['final_cosine']:.4f} | {s['final_distance']:.3f} | {heads} | "
                     f"{s['mean_weight_change']:.4f} | {name} ({value:.4f}) |")
    return "\n".join(lines + [""])


def lens_section(tables: dict[str, dict[str, tuple[list[str], list[str], list[float]]]]) -> str:
    """``tables[prompt][model] = (layer labels, lens top-1 tokens, p(final answer))``."""
    lines = ["## Logit lens", "", "The residual stream read through the final LayerNorm and unembedding at each "
             "layer, last position: the lens' top token and the probability it gives the model's final answer.", "",
             "![logit lens](logit_lens.png)", ""]
    for prompt, per_model in tables.items():
        models = list(per_model)
        labels = per_model[models[0]][0]
        lines += [f"Prompt {_code(prompt)}:", "", "| layer | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        for i, label in enumerate(labels):
            cells = [f"{_code(per_model[m][1][i])} {per_model[m][2][i]:.2f}" for m in models]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
