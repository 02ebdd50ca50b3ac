"""Perplexity of any checkpoint on held-out text, and the loss curves the training stages logged.

``heldout_perplexity(model_path, sets)`` measures, for each named set (default: ``general`` = the
builtin Python docs, ``domain`` = the builtin Python code, the corpora of pretraining and continued
pretraining), the mean next-token cross-entropy on that source's held-out documents: the same
per-document split rule the pretraining stages use (``shared.data.split.is_heldout_doc``), so no
document any stage trained on is scored. Documents are tokenized with the artifact's own tokenizer,
joined with ``<|endoftext|>`` and cut into non-overlapping context-length windows; the first
``max_tokens`` tokens are used, so every artifact is scored on exactly the same text. Reported per
set: ``<set>_loss`` (nats/token), ``<set>_ppl`` and ``<set>_bpb`` (bits per UTF-8 byte, comparable
across tokenizers, unlike loss and perplexity).

``training_curves(artifacts, png)`` plots the eval/val losses each stage logged in its
``metrics.jsonl`` on one figure, one panel per stage, for the report.

Why our own loop instead of lm-eval's ``wikitext``-style perplexity task: lm-eval's rolling
loglikelihood needs a registered dataset per source; here the sources are the journey's own
corpora, read through ``shared.data`` with the split rule the training stages use.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from shared.data.heldout import HELDOUT_SETS, heldout_text
from shared.eval.checkpoint import require_causal_lm
from shared.eval.engine_backend import engine_context, engine_sequence_logits, engine_tokenizer, is_quantized
from shared.eval.generate import context_length, load_chat_model


def _windows(ids: list[int], width: int, max_tokens: int) -> list[list[int]]:
    ids = ids[: max_tokens + 1]
    # Overlap by one token so every token after the first is a prediction target exactly once.
    return [ids[i:i + width + 1] for i in range(0, len(ids) - 1, width) if len(ids[i:i + width + 1]) > 1]


WindowScorer = Callable[[list[list[int]]], list["torch.Tensor"]]  # windows -> logits [len(w), vocab] each


def hf_scorer(model, batch_size: int = 8) -> WindowScorer:
    """Logits of an HF causal LM for each window, ``batch_size`` windows per forward (right-padded, masked)."""
    import torch

    def score(windows: list[list[int]]) -> list[torch.Tensor]:
        device = next(model.parameters()).device
        out = []
        for start in range(0, len(windows), batch_size):
            batch = windows[start:start + batch_size]
            width = max(len(w) for w in batch)
            x = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for row, w in enumerate(batch):
                x[row, :len(w)] = torch.tensor(w)
                mask[row, :len(w)] = 1
            logits = model(x.to(device), attention_mask=mask.to(device)).logits.float().cpu()
            out.extend(logits[row, :len(w)] for row, w in enumerate(batch))
        return out
    return score


def text_loss(score: WindowScorer, context: int, tokenizer, text: str, max_tokens: int) -> dict[str, float]:
    """Mean cross-entropy over the first ``max_tokens`` tokens of ``text``, in windows of ``context`` tokens
    scored by ``score`` (``hf_scorer`` for an HF model; our engine or llama.cpp for quantized variants)."""
    import torch
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if isinstance(eot, int) and eot != tokenizer.unk_token_id:
        ids = [eot] + ids  # the document boundary the model saw in pretraining
    windows = _windows(ids, context, max_tokens)
    total, count = 0.0, 0
    with torch.inference_mode():
        for window, logits in zip(windows, score([w[:-1] for w in windows]), strict=True):
            target = torch.tensor(window[1:])
            total += float(torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum"))
            count += len(target)
    scored_text = tokenizer.decode([t for w in windows for t in w[1:]], skip_special_tokens=False)
    n_bytes = max(1, len(scored_text.encode("utf-8")))
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "bpb": total / math.log(2) / n_bytes, "tokens": count}


def heldout_perplexity(model_path: str | Path, sets: Mapping[str, str] | None = None, max_tokens: int = 16384,
                       batch_size: int = 8, device: str = "cpu") -> dict[str, float]:
    """``{<set>_loss, <set>_ppl, <set>_bpb}`` for each held-out set (see the module docstring)."""
    require_causal_lm(model_path)
    if is_quantized(model_path):  # no HF weights: our engine or llama.cpp computes the logits
        def score(windows):
            return [engine_sequence_logits(model_path, w) for w in windows]
        context, tokenizer = engine_context(model_path), engine_tokenizer(model_path)
    else:
        model, tokenizer = load_chat_model(str(model_path), device)
        score, context = hf_scorer(model, batch_size), context_length(model)
    out: dict[str, float] = {}
    # ~6 bytes per token leaves room: the text is cut to max_tokens after tokenization anyway.
    for name, source in (sets or HELDOUT_SETS).items():
        result = text_loss(score, context, tokenizer, heldout_text(source, max_tokens * 6), max_tokens)
        out.update({f"{name}_{k}": v for k, v in result.items() if k != "tokens"})
    return out


# Which logged keys are curves worth drawing, per stage kind of log.
CURVE_KEYS = ("val_loss", "general_loss", "eval_loss")


def logged_curves(artifact_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{key: [(step, value), ...]}`` for the eval/val losses in an artifact's ``metrics.jsonl``."""
    path = Path(artifact_dir) / "metrics.jsonl"
    curves: dict[str, list[tuple[int, float]]] = {}
    if not path.exists():
        return curves
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a half-written last line of an interrupted stage
        for key in CURVE_KEYS:
            if isinstance(row.get(key), (int, float)) and "step" in row:
                curves.setdefault(key, []).append((int(row["step"]), float(row[key])))
    return curves


def training_curves(artifacts: Sequence[Any], png: str | Path) -> Path | None:
    """One panel per artifact with logged eval losses; ``None`` when no artifact logged any."""
    panels = [(a, c) for a in artifacts if (c := logged_curves(a.dir))]
    if not panels:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, (artifact, curves) in zip(axes[0], panels):
        for key, points in curves.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=key)
        ax.set_title(artifact.stage)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Held-out loss logged during training, per stage")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Path(png)
