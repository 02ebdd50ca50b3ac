"""Direct preference optimization with TRL's ``DPOTrainer``, and the DPO stage around it.

Worker side, ``build_trainer``: the policy loads with the configured method (full / LoRA); the
frozen reference is the SFT model (for LoRA TRL uses the policy with its adapters switched off when
the reference is the policy's own base). Pairs are conversational (``prompt`` messages, ``chosen``
/ ``rejected`` assistant replies), rendered by the one chat template.

Driver side, ``run_dpo``: pairs from a ``prefs`` artifact (or a preference dataset by name), the
fit, then the before/after tables: base vs SFT vs DPO on held-out instructions and on the
safety/helpfulness prompts, and DPO's win-rate against SFT on the same prompts.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.tokenizer.chat import CHAT_TEMPLATE

if TYPE_CHECKING:
    from shared.registry import Artifact, Registry

PAIR_FILES = {"train": "train.jsonl", "heldout": "heldout.jsonl"}


def pair_row(pair: dict[str, Any]) -> dict[str, Any]:
    """TRL's conversational preference row (tool calls as JSON strings for Arrow)."""
    from shared.training.sft import arrow_safe
    return {k: arrow_safe(pair[k]) for k in ("prompt", "chosen", "rejected")}


def build_trainer(spec, args: dict[str, Any]):
    """A ``DPOTrainer`` for ``spec`` (a ``TrlSpec``) with the common ``TrainingArguments`` ``args``."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from shared.config import from_dict
    from shared.training.finetune_config import MethodConfig
    from shared.training.finetune_methods import load_for_finetuning

    cfg = spec.config
    method = from_dict(MethodConfig, cfg["method"])
    model, tokenizer = load_for_finetuning(spec.model_path, method, "cuda" if cfg["use_gpu"] else "cpu")
    tokenizer.chat_template = CHAT_TEMPLATE
    reference_path = spec.extra.get("reference_path", spec.model_path)
    ref_model = None  # TRL: a frozen copy of the policy (full) or the policy with adapters off (LoRA)
    if reference_path != spec.model_path:
        ref_model = AutoModelForCausalLM.from_pretrained(reference_path)
    losses, weights = [cfg["loss_type"]], [1.0]
    if cfg["sft_weight"] > 0:  # RPO: DPO plus NLL on the chosen reply
        losses, weights = losses + ["sft"], weights + [cfg["sft_weight"]]
    dpo_args = DPOConfig(**args, beta=cfg["beta"], loss_type=losses, loss_weights=weights,
                         max_length=cfg["train"]["max_length"])
    eval_ds = Dataset.from_list(spec.eval_rows) if spec.eval_rows else None
    return DPOTrainer(model=model, ref_model=ref_model, args=dpo_args, train_dataset=Dataset.from_list(spec.train_rows),
                      eval_dataset=eval_ds, processing_class=tokenizer)


# ----------------------------------------------------------------------------- driver side

def read_pairs(path: Path) -> list[dict[str, Any]]:
    """Every pair of a jsonl file in the preference schema, validated (errors name the file and line)."""
    from shared.data.instructions import validate_preference_example
    from shared.data.instructions.loaders import read_jsonl
    return list(read_jsonl(path, validate_preference_example))


def load_pairs(registry: Registry, source: str, run: str, split: str, limit: int | None) -> tuple[list, Artifact | None]:
    """Preference pairs from a prefs artifact (``prefs``, ``run/prefs``) or a dataset by name."""
    from shared.data import DataError
    from shared.data.instructions import load_preference_dataset
    from shared.registry import ArtifactNotFound
    try:
        art = registry.resolve(source, run=run)
    except ArtifactNotFound:
        if not (source.startswith(("hf:", "builtin:")) or Path(source).is_file()):
            raise
        try:
            return load_preference_dataset(source, split=split, max_examples=limit), None
        except DataError:
            if split == "train":
                raise
            return [], None  # a small file may have no held-out pairs: train without the eval loss
    if art.kind != "dataset" or not (art.dir / PAIR_FILES["train"]).exists():
        raise ValueError(f"artifact {art.id} is a {art.kind}, not a preference-pair dataset; "
                         "point data= at a prefs artifact (python -m ray_jobs.prefs) or a preference dataset")
    rows = read_pairs(art.dir / PAIR_FILES[split]) if (art.dir / PAIR_FILES[split]).exists() else []
    return (rows[:limit] if limit else rows), art


DPO_LOGGED = ("rewards/margins", "rewards/accuracies", "eval_rewards/margins", "eval_rewards/accuracies")


def run_dpo(cfg) -> Artifact:
    """Train DPO on preference pairs, compare base / SFT / DPO, register the policy."""
    import time
    from shared.config import to_dict
    from shared.data.instructions import check_nonempty
    from shared.registry import Registry
    from shared.training.posttrain import first_last, fit_trl, model_lineage, resolve_model, train_metrics

    t0 = time.perf_counter()
    registry = Registry(cfg.runs_dir)
    policy = resolve_model(registry, cfg.init_from, cfg.run)
    reference = resolve_model(registry, cfg.reference or cfg.init_from, cfg.run)
    train_pairs, pairs_art = load_pairs(registry, cfg.data, cfg.run, "train", cfg.max_examples)
    check_nonempty(train_pairs, f"the preference data {cfg.data!r}")
    eval_pairs, _ = load_pairs(registry, cfg.data, cfg.run, "heldout", cfg.eval_examples or None)
    out_dir = registry.stage_dir(cfg.run, cfg.stage, overwrite=cfg.overwrite)
    t_data = time.perf_counter() - t0
    fit = fit_trl(cfg, "dpo", policy, out_dir, [pair_row(p) for p in train_pairs],
                  [pair_row(p) for p in eval_pairs[: cfg.eval_examples]], extra={"reference_path": reference.path})
    # TRL logs implicit rewards (beta * log-ratio to the reference): their margin and how often chosen wins.
    metrics = {**train_metrics(fit.history, fit.final_eval), **first_last(fit.history, DPO_LOGGED),
               "n_pairs": len(train_pairs)}
    t1 = time.perf_counter()
    models = dict(model_lineage(registry, reference, generations=2))  # e.g. {cpt: ..., sft: ...}
    old = list(models)[-1]
    models[cfg.stage] = str(out_dir)
    metrics.update(compare_stages(models, cfg.stage, old, out_dir, cfg))
    if eval_pairs:  # does the policy itself rank held-out chosen above rejected more often than SFT did?
        from shared.eval.chat_eval import pair_preference_accuracy
        for label in (old, cfg.stage):
            key = "pair_accuracy" if label == cfg.stage else f"{old}_pair_accuracy"
            metrics[f"heldout_{key}"] = pair_preference_accuracy(models[label], eval_pairs[: cfg.eval_examples])
    parents = policy.parent_ids + ([pairs_art.id] if pairs_art else [])
    timings = {"data_s": t_data, "train_s": fit.train_s, "eval_s": time.perf_counter() - t1}
    return registry.register(cfg.run, cfg.stage, "hf-model", parents=parents, config=to_dict(cfg), metrics=metrics,
                             timings=timings, extra={"reference": reference.path, "data": cfg.data})


def compare_stages(models: dict[str, str], new: str, old: str, out_dir: Path, cfg) -> dict[str, Any]:
    """Held-out instructions and safety/helpfulness prompts for every model; ``new``'s win-rate over ``old``.

    ``models`` maps a label (the stage name) to a checkpoint. Writes ``heldout_eval.{md,json}`` and
    ``safety_helpfulness.{md,json}`` into ``out_dir``; returns
    the new model's numbers (``heldout_*``, ``safety_*``) and ``win_rate_vs_<old>`` for the manifest.
    """
    from shared.data.instructions import load_sft_dataset, safety_prompts
    from shared.eval.chat_eval import evaluate_models, win_rate

    heldout = load_sft_dataset("builtin:instructions", split="heldout", max_examples=cfg.eval_examples or None)
    safety = [ex for side in safety_prompts("heldout").values() for ex in side]
    results = {"heldout": evaluate_models(models, heldout, out_dir, "heldout_eval", cfg.max_new_tokens),
               "safety": evaluate_models(models, safety, out_dir, "safety_helpfulness", cfg.max_new_tokens)}
    metrics: dict[str, Any] = {}
    for prefix, result in results.items():
        metrics.update({f"{prefix}_{k}": v for k, v in result[new]["summary"].items() if k != "n"})
        if old in result:
            metrics.update({f"{prefix}_{old}_{k}": v for k, v in result[old]["summary"].items() if k != "n"})
            wr = win_rate(result[new]["rows"], result[old]["rows"])
            metrics.update({f"{prefix}_win_rate_vs_{old}": wr["win_rate"], f"{prefix}_wins_ties_losses_vs_{old}":
                            [wr["wins"], wr["ties"], wr["losses"]]})
    return metrics
