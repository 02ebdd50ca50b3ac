"""What every post-training stage shares (SFT, DPO, reward model, RL, preference pairs).

The algorithm modules (``sft``, ``dpo``, ``reward``, ``rl``) and ``prefs`` import this module and
never each other (docs/architecture.md, Layers). It holds:

- start models: ``resolve_model`` (an artifact, an HF directory or a hub id) and
  ``resolve_reward_model`` (the same, refusing anything that is not a sequence classifier);
- the fit: ``fit_trl(cfg, algorithm, model, out_dir, rows)`` runs ``trl_worker.trl_train_worker``
  under Ray Train's ``TorchTrainer`` (``num_workers`` processes; gloo on CPU, NCCL on GPU;
  DeepSpeed inside the HF Trainer when configured) with the config dataclass itself, copies the
  final checkpoint into the stage's artifact directory and writes ``metrics.jsonl`` and
  ``loss_curve.png``; ``train_metrics`` / ``first_last`` read the headline numbers off its history;
  an interrupted fit continues from its last checkpoint when rerun (``fit_trl``'s docstring);
- rows: ``arrow_safe`` (messages Arrow can hold), ``pair_row`` and ``load_pairs`` (preference pairs
  from a prefs artifact or a dataset);
- the after-training comparison: ``model_lineage`` (a model's registered ancestors) and
  ``compare_stages`` (held-out instructions, safety/helpfulness and the win-rate);
- reward scoring (``RewardScorer``), used by prefs, RL and the reward stage's own evaluation.

Scoring with the reward model: a reply as generated (the text decoded after ``<|assistant|>``, e.g.
``42<|end|>``) is appended to the prompt rendered with the generation prompt, which is the same
string, hence the same tokens, as the training rendering of a terminated reply (TRL renders
``prompt + chosen`` without a generation prompt: ``...<|user|>q<|end|><|assistant|>reply<|end|>``).
Padding sits on the right and the model reads the last non-pad token, as in training. Sequences
longer than the context lose their oldest tokens (training drops such pairs instead).

Each stage evaluates its result and registers the artifact itself: each knows its own headline metrics.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.cluster import ensure_ray, fit
from shared.config import ConfigError
from shared.data import DataError
from shared.data.instructions import (hard_safety_prompts, load_preference_dataset, load_sft_dataset,
                                      safety_prompts, validate_preference_example)
from shared.data.instructions.loaders import read_jsonl
from shared.eval.chat_eval import evaluate_models, win_rate
from shared.eval.generate import context_length
from shared.progress import progress_file
from shared.registry import Artifact, ArtifactNotFound, Registry
from shared.chat_format import render_chat
from shared.training.curves import plot_curves
from shared.training.posttrain_config import PostTrainConfig
from shared.training.resume import artifact_stamp, checkpoint_root, discard, plan_resume, resume_key
from shared.training.trl_worker import LOG_HISTORY, Algorithm, TrainRows, TrlSpec, trl_train_worker

PAIR_FILES = {"train": "train.jsonl", "heldout": "heldout.jsonl"}


# ----------------------------------------------------------------------------- start models

@dataclass
class ModelRef:
    """A model to start from: a registered artifact, or an HF directory / hub id outside the registry."""

    path: str
    artifact: Artifact | None = None

    @property
    def parent_ids(self) -> list[str]:
        return [self.artifact.id] if self.artifact else []


def resolve_model(registry: Registry, name: str, run: str) -> ModelRef:
    """``name`` as an artifact (``sft``, ``run/stage``, ``latest:sft``), else an HF dir or hub id."""
    try:
        art = registry.resolve(name, run=run)
    except ArtifactNotFound:
        if Path(name).is_dir() and (Path(name) / "config.json").exists():
            return ModelRef(str(Path(name).resolve()))
        if "/" in name and not Path(name).exists():
            return ModelRef(name)  # a hub id: from_pretrained fetches it (when online)
        raise
    if not (art.dir / "config.json").exists():
        raise ArtifactNotFound(f"artifact {art.id} is a {art.kind}, not a model checkpoint; "
                               "start from a model stage (pretrain, cpt, sft, dpo, ...)")
    return ModelRef(str(art.dir), art)


def resolve_reward_model(registry: Registry, name: str, run: str) -> ModelRef:
    """``name`` as a reward model (artifact or HF dir); anything that is not a sequence classifier is refused."""
    ref = resolve_model(registry, name, run)
    config = Path(ref.path) / "config.json"
    architectures = (json.loads(config.read_text()).get("architectures") or []) if config.exists() else []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ConfigError(f"{name!r} ({ref.path}) is a {architectures or 'model of unknown architecture'}, not a "
                          "reward model; train one with python -m ray_jobs.reward and point reward_model= at it")
    return ref


# ----------------------------------------------------------------------------- the fit

@dataclass
class FitResult:
    out_dir: Path
    history: list[dict[str, Any]]
    final_eval: dict[str, Any] = field(default_factory=dict)
    train_s: float = 0.0
    resumed_from_step: int = 0  # the step this attempt started from (0: fresh); record it in the artifact's extra


def preflight(cfg: PostTrainConfig, model: ModelRef) -> None:
    """Fail on the driver, before any worker starts, on a method the model or machine cannot run.

    QLoRA without a GPU and LoRA targets the model does not have are checked here on an empty
    (meta-device) copy of the architecture: no weights are read, so this is cheap even for 8B.
    """
    # finetune_methods imports peft (seconds): paid when a stage trains, not whenever a stage module is imported.
    from shared.training.finetune_methods import require_qlora_runtime, target_modules_for

    method = cfg.method
    if method.method == "qlora":
        require_qlora_runtime(cfg.device)
    if method.method == "full" or (not Path(model.path).is_dir()):
        return  # hub ids: the architecture arrives with the download, checked in the worker
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model.path))
    target_modules_for(skeleton, method.target_spec())


TRAINER_DIR = "trainer"  # under the stage's checkpoint root: the HF Trainer's output_dir (checkpoint-N/)
RAY_DIR = "ray"  # under the stage's checkpoint root: Ray Train's storage (only the final checkpoint is reported)


def latest_trainer_checkpoint(directory: Path) -> tuple[Path, int] | None:
    """The newest complete HF Trainer checkpoint under a stage's checkpoint root, with its step.

    Complete means its ``trainer_state.json`` is there: the Trainer writes it after the weights,
    optimizer and RNG states, so a save cut short has none.
    """
    found = []
    for path in (Path(directory) / TRAINER_DIR).glob("checkpoint-*"):
        try:
            found.append((int(json.loads((path / "trainer_state.json").read_text())["global_step"]), path))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not found:
        return None
    step, path = max(found, key=lambda f: f[0])
    return path, step


def _path_stamp(path: str | None) -> str | None:
    """``path``, plus the ``created_at`` of the artifact there if it is one (a remade artifact differs)."""
    if path is None:
        return None
    try:
        return artifact_stamp(Registry.load(path))
    except (OSError, ValueError, KeyError, TypeError, ArtifactNotFound):
        return path


def _fit_inputs(model: ModelRef, rows: TrainRows) -> dict[str, Any]:
    """What a fit reads besides its config: the models (stamped) and a digest of the rows."""
    digest = hashlib.sha256(json.dumps([rows.train, rows.eval], sort_keys=True, default=str).encode()).hexdigest()
    return {"model": artifact_stamp(model.artifact) or model.path, "reference": _path_stamp(rows.reference_path),
            "reward_model": _path_stamp(rows.reward_model_path), "rows": digest}


def fit_trl(cfg: PostTrainConfig, algorithm: Algorithm, model: ModelRef, out_dir: Path,
            rows: TrainRows) -> FitResult:
    """Train under Ray Train and leave an HF checkpoint + history in ``out_dir`` (see module docstring).

    Resumable checkpoints go to ``<runs>/<run>/_ckpt/<stage>/trainer/checkpoint-N`` every
    ``train.ckpt_every`` steps. A fit whose earlier attempt was interrupted continues from the newest
    one when the config and inputs (start model, reference, reward model, rows) are those it was
    written under (``shared.training.resume``), and says so in one line; otherwise the old ones are
    removed and it starts at step 0. The checkpoints are deleted as soon as the final weights are in
    ``out_dir``, so a stage whose finished artifact is being replaced (``overwrite=true``) finds none
    and never resumes. Ray Train's own storage (``ray/`` beside them) is wiped before every fit: Ray
    Train v2 would otherwise hand a new fit of the same name the old run's checkpoint.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    preflight(cfg, model)
    ensure_ray()
    root = Path(out_dir).parent.parent  # out_dir is <root>/<run>/<stage> (Registry.stage_dir)
    plan = plan_resume(checkpoint_root(root, cfg.run, cfg.stage), cfg.stage, resume_key(cfg, _fit_inputs(model, rows)),
                       latest_trainer_checkpoint)
    storage = plan.directory / RAY_DIR
    shutil.rmtree(storage, ignore_errors=True)  # Ray Train's run of the last attempt (see the docstring)
    spec = TrlSpec(algorithm=algorithm, config=cfg, model_path=model.path, rows=rows,
                   checkpoint_dir=str(plan.directory / TRAINER_DIR),
                   resume_from=str(plan.checkpoint) if plan.resuming else None,
                   progress_file=str(progress_file(root, cfg.run, cfg.stage)))
    t0 = time.perf_counter()
    result = fit(TorchTrainer(
        trl_train_worker, train_loop_config={"spec": spec},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=ray.train.RunConfig(name=cfg.stage, storage_path=str(storage)),
    ))
    train_s = time.perf_counter() - t0
    if result.checkpoint is None:
        raise RuntimeError(f"{algorithm.name} training finished without a checkpoint; see the Ray logs under {storage}")
    with result.checkpoint.as_directory() as d:
        shutil.copytree(d, out_dir, dirs_exist_ok=True)
    discard(plan.directory)  # the final weights are in out_dir now (see the docstring)
    log = json.loads((out_dir / LOG_HISTORY).read_text())
    final = log.pop()["final_eval"] if log and "final_eval" in log[-1] else {}
    (out_dir / LOG_HISTORY).unlink()
    history = [row for row in log if "step" in row]
    with open(out_dir / "metrics.jsonl", "w", encoding="utf-8") as fh:
        for row in history:
            fh.write(json.dumps(row) + "\n")
    plot_trl_history(history, out_dir / "loss_curve.png", f"{cfg.run}/{cfg.stage}")
    return FitResult(Path(out_dir), history, final, train_s, resumed_from_step=plan.step)


def plot_trl_history(history: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Train and eval loss of an HF Trainer log history (``loss`` / ``eval_loss`` per ``step``)."""
    curves = {"train": [(r["step"], r["loss"]) for r in history if "loss" in r],
              "eval": [(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r]}
    return plot_curves(curves, path, title, "loss")


def train_metrics(history: list[dict[str, Any]], final_eval: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of a run: first/last train loss, first/final eval loss and every final eval_* value."""
    train = [r["loss"] for r in history if "loss" in r]
    evals = [r["eval_loss"] for r in history if "eval_loss" in r]
    out: dict[str, Any] = {k: v for k, v in final_eval.items() if isinstance(v, (int, float))}
    if train:
        out.update(first_train_loss=train[0], last_train_loss=train[-1])
    if evals:
        out["first_eval_loss"] = evals[0]
    steps = [r["step"] for r in history]
    out["steps"] = max(steps) if steps else 0
    return out


def first_last(history: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """``first_<key>`` / ``last_<key>`` of each logged key (``/`` becomes ``_``) that the history holds."""
    out: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in history if r.get(key) is not None]
        if values:
            name = key.replace("/", "_")
            out[f"first_{name}"], out[f"last_{name}"] = values[0], values[-1]
    return out


# ----------------------------------------------------------------------------- rows

def arrow_safe(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with tool calls as compact JSON strings (see ``shared.chat_format``)."""
    out = []
    for m in messages:
        m = dict(m)
        if isinstance(m.get("tool_call"), dict):
            m["tool_call"] = json.dumps(m["tool_call"], ensure_ascii=False, separators=(",", ":"))
        m.setdefault("content", "")
        out.append(m)
    return out


def pair_row(pair: dict[str, Any]) -> dict[str, Any]:
    """TRL's conversational preference row (tool calls as JSON strings for Arrow)."""
    return {k: arrow_safe(pair[k]) for k in ("prompt", "chosen", "rejected")}


def read_pairs(path: Path) -> list[dict[str, Any]]:
    """Every pair of a jsonl file in the preference schema, validated (errors name the file and line)."""
    return list(read_jsonl(path, validate_preference_example))


def load_pairs(registry: Registry, source: str, run: str, split: str, limit: int | None) -> tuple[list, Artifact | None]:
    """Preference pairs from a prefs artifact (``prefs``, ``run/prefs``) or a dataset by name."""
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


# ----------------------------------------------------------------------------- after training

def model_lineage(registry: Registry, start: ModelRef, generations: int = 3) -> list[tuple[str, str]]:
    """``(label, path)`` of ``start`` and its registered model ancestors, oldest first, labelled by stage name.

    Each step follows the first parent that is a causal LM checkpoint (reward models and datasets
    are skipped), so RL <- DPO <- SFT <- CPT reads back from any of them.
    """
    chain, art = [], start.artifact
    chain.append((art.stage if art else "start", start.path))
    while art is not None and len(chain) < generations:
        parents = [registry.resolve(p) for p in art.parents]
        art = next((p for p in parents if p.kind == "hf-model" and (p.dir / "config.json").exists()), None)
        if art is not None:
            chain.append((art.id if any(art.stage == label for label, _ in chain) else art.stage, str(art.dir)))
    return chain[::-1]


def compare_stages(models: dict[str, str], new: str, old: str, out_dir: Path, cfg: PostTrainConfig) -> dict[str, Any]:
    """Held-out instructions and safety/helpfulness prompts for every model; ``new``'s win-rate over ``old``.

    ``models`` maps a label (the stage name) to a checkpoint. Writes ``heldout_eval.{md,json}`` and
    ``safety_helpfulness.{md,json}`` and ``safety_hard.{md,json}`` into ``out_dir``; returns
    the new model's numbers (``heldout_*``, ``safety_*``, ``safety_hard_*``) and ``win_rate_vs_<old>`` for the manifest.
    """
    heldout = load_sft_dataset("builtin:instructions", split="heldout", max_examples=cfg.eval_examples or None)
    safety = [ex for side in safety_prompts("heldout").values() for ex in side]
    # The easy set saturates at SFT (100% / 100% on the tiny model); the hard one (indirect harmful requests,
    # borderline harmless ones in the same frames) is where post-training can still move (issue 20).
    hard = [ex for side in hard_safety_prompts("heldout").values() for ex in side]
    results = {"heldout": evaluate_models(models, heldout, out_dir, "heldout_eval", cfg.max_new_tokens),
               "safety": evaluate_models(models, safety, out_dir, "safety_helpfulness", cfg.max_new_tokens),
               "safety_hard": evaluate_models(models, hard, out_dir, "safety_hard", cfg.max_new_tokens)}
    metrics: dict[str, Any] = {}
    for prefix, result in results.items():
        metrics.update({f"{prefix}_{k}": v for k, v in result[new]["summary"].items() if k != "n"})
        if old in result:
            metrics.update({f"{prefix}_{old}_{k}": v for k, v in result[old]["summary"].items() if k != "n"})
            wr = win_rate(result[new]["rows"], result[old]["rows"])
            metrics.update({f"{prefix}_win_rate_vs_{old}": wr["win_rate"], f"{prefix}_wins_ties_losses_vs_{old}":
                            [wr["wins"], wr["ties"], wr["losses"]]})
    return metrics


# ----------------------------------------------------------------------------- reward scoring

class RewardScorer:
    """A reward model held in memory; ``score(prompts, replies)`` gives one float per reply (see module docstring)."""

    def __init__(self, path: str, device: str = "cpu"):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token_id is None:
            raise ConfigError(f"the tokenizer of {path} has no pad token; the classifier finds the last real "
                              "token by it: save the reward model with the tokenizer it was trained with")
        self.model.config.pad_token_id = self.tokenizer.pad_token_id  # as RewardTrainer set it in training
        self.limit = context_length(self.model)
        self.device = torch.device(device)

    def encode(self, prompts: Sequence[Sequence[dict[str, Any]]], replies: Sequence[str]) -> list[list[int]]:
        """Token ids of each prompt + reply, as the trainer tokenized ``prompt + chosen`` (see module docstring)."""
        if len(prompts) != len(replies):
            raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies; pass one reply per prompt")
        texts = [render_chat(p, add_generation_prompt=True) + r for p, r in zip(prompts, replies)]
        return [self.tokenizer(t, add_special_tokens=False).input_ids[-self.limit:] for t in texts]

    def score(self, prompts: Sequence[Sequence[dict[str, Any]]], replies: Sequence[str],
              batch_size: int = 32) -> list[float]:
        return self.score_ids(self.encode(prompts, replies), batch_size)

    def score_ids(self, sequences: Sequence[Sequence[int]], batch_size: int = 32) -> list[float]:
        """Scores of tokenized sequences, right-padded in batches of ``batch_size``."""
        import torch

        pad = self.tokenizer.pad_token_id
        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(sequences), batch_size):
                batch = sequences[start:start + batch_size]
                width = max(len(s) for s in batch)
                ids = torch.tensor([list(s) + [pad] * (width - len(s)) for s in batch], device=self.device)
                mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=self.device)
                out.extend(self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist())
        return out


def score_with_reward_model(path: str, prompts: Sequence[Sequence[dict[str, Any]]], replies: Sequence[str],
                            batch_size: int = 32) -> list[float]:
    """The reward model at ``path``'s score of each generated reply to its prompt (a message list)."""
    return RewardScorer(path).score(prompts, replies, batch_size)


__all__ = ["FitResult", "ModelRef", "PAIR_FILES", "RewardScorer", "arrow_safe", "compare_stages", "first_last",
           "fit_trl", "latest_trainer_checkpoint", "load_pairs", "model_lineage", "pair_row", "plot_trl_history",
           "preflight", "read_pairs", "resolve_model", "resolve_reward_model", "score_with_reward_model", "train_metrics"]
