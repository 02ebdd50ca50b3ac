"""The MoE experiment: MoE (top-1, top-2, fine-grained + shared with bias balancing) against dense models of equal
active and equal total parameters, on the same data, batches, steps and schedule.

``moe_experiment(cfg)`` trains the tokenizer (or reuses the run's), tokenizes the pretrain preset's corpus, then
trains every arm of ``cfg.moe["arms"]`` **in this process** (a plain PyTorch loop, no Ray Train: one CPU
process per arm would only add start-up time). The arms take turns of ``eval_every`` steps (``ArmTrainer``),
never running at the same time, so their timings do not compete and a change in machine load hits all alike;
they are measured, not registered as artifacts of their own, so each run retrains them. The arms
(``shared.model.moe``; block design of Qwen2-MoE, so dense and MoE differ only in the MLP):

- ``dense-active``: one SwiGLU MLP of width ``expert_hidden``: the active parameters of ``moe-top1``.
- ``dense-total``: one SwiGLU MLP of width ``n_experts * expert_hidden``: the total parameters of ``moe-top1``.
- ``moe-top1`` / ``moe-top2``: ``n_experts`` experts of width ``expert_hidden``, Switch top-1 / top-2 routing,
  capacity ``capacity_factor``, load-balancing loss and z-loss.
- ``moe-fine``: ``2 n_experts`` experts of width ``expert_hidden / 2``, top-2, plus one shared expert of width
  ``expert_hidden / 2``; DeepSeek-V3 bias balancing instead of the auxiliary loss (capacity still applies in
  training). Its attention has no q/k/v biases (Ernie-4.5-MoE's block, the format it is saved in).

Per arm it records, every ``eval_every`` steps: validation loss (cross-entropy only, without the auxiliary
terms), training FLOPs so far (``MoEGPT.flops_per_token`` x tokens), training wall time so far (evaluation
excluded), expert load fractions over the interval (mean over layers) and the dropped-assignment rate.
The experiment artifact ``<run>/experiment-moe`` holds the table (md/json), ``experiment-moe.png`` (val loss
against FLOPs and against wall time, tokens/s) and ``experiment-moe-experts.png`` (expert utilisation over
training), the per-arm curves in ``curves.json``, and the arms named in ``moe.save`` (default ``moe-top1``, saved
as Qwen2-MoE, and ``moe-fine``, as Ernie-4.5-MoE) as HF checkpoints with the tokenizer, each registered as a model
artifact of its own, ``<run>/<arm>`` (kind ``hf-model``), which ``AutoModelForCausalLM``, our engine
(``shared.serving.runtime.open_model``, so ``journey serve``) and ``journey quantize init_from=<run>/<arm>`` load,
and each as an F16 GGUF in
``gguf/<arm>-f16.gguf`` (``shared.quant.gguf_moe``), with llama.cpp's top-1 agreement with transformers on a
validation batch in the ``llama_top1`` column (None for arms not saved, or when llama.cpp is missing: ``gguf_why``).
"""
from __future__ import annotations

import json
import math
import time
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from shared.config import ConfigError  # noqa: E402
from shared.data import TokenDataset  # noqa: E402
from shared.model.hf import save_moe_checkpoint  # noqa: E402
from shared.model.moe import MoEConfig, MoEGPT  # noqa: E402
from shared.model.presets import model_config  # noqa: E402
from shared.quant.gguf_moe import export_and_check  # noqa: E402
from shared.registry import Artifact, Registry  # noqa: E402
from shared.training.experiments import ExperimentConfig, _pretrain_cfg, _tokenizer, write_experiment  # noqa: E402
from shared.training.optim import build_adamw  # noqa: E402
from shared.training.runner import prepare_corpus  # noqa: E402
from shared.training.schedules import lr_at  # noqa: E402

STAGE = "experiment-moe"
ARMS = ("dense-active", "dense-total", "moe-top1", "moe-top2", "moe-fine")
#: ``cfg.moe`` keys and their defaults; expert_hidden None = the SwiGLU width of a 4x GELU MLP (8/3 n_embd).
DEFAULTS: dict[str, Any] = {"arms": list(ARMS), "n_experts": 4, "expert_hidden": None, "capacity_factor": 1.25,
                            "aux_weight": 1e-2, "z_weight": 1e-3, "bias_rate": 1e-3,
                            "save": ["moe-top1", "moe-fine"]}
COLUMNS = ["arm", "experts", "total_params", "active_params", "flops_per_token", "final_val_loss", "train_s",
           "tokens_per_s", "dropped_pct", "expert_load_min", "expert_load_max", "unused_experts", "llama_top1"]


def moe_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """``cfg.moe`` over ``DEFAULTS``, checked: a bad key or arm is a ``ConfigError`` naming the fix."""
    unknown = sorted(set(cfg.moe) - DEFAULTS.keys())
    if unknown:
        raise ConfigError(f"unknown moe setting {unknown[0]!r}; the moe experiment takes {sorted(DEFAULTS)}")
    s = {**DEFAULTS, **cfg.moe}
    bad = [a for a in s["arms"] if a not in ARMS]
    if bad or not s["arms"]:
        raise ConfigError(f"unknown moe arm {bad[0] if bad else '(none)'!r}; choose from {list(ARMS)}, e.g. "
                          "moe.arms=[dense-active,moe-top1]")
    if int(s["n_experts"]) < 2:
        raise ConfigError(f"moe.n_experts must be >= 2, got {s['n_experts']}")
    s["save"] = [a for a in ([s["save"]] if isinstance(s["save"], str) else s["save"] or []) if a in s["arms"]]
    return s


def arm_config(arm: str, base: MoEConfig, s: dict[str, Any]) -> MoEConfig:
    """The ``MoEConfig`` of one arm (see the module docstring)."""
    from dataclasses import replace

    e, h = int(s["n_experts"]), int(s["expert_hidden"])
    common = dict(capacity_factor=float(s["capacity_factor"]), aux_weight=float(s["aux_weight"]),
                  z_weight=float(s["z_weight"]), bias_rate=float(s["bias_rate"]))
    arms = {
        "dense-active": dict(n_experts=0, dense_hidden=h),
        "dense-total": dict(n_experts=0, dense_hidden=e * h),
        "moe-top1": dict(n_experts=e, top_k=1, expert_hidden=h, **common),
        "moe-top2": dict(n_experts=e, top_k=2, expert_hidden=h, **common),
        # Ernie-4.5-MoE's block (see shared.model.moe): no q/k/v bias, ungated shared expert, renormalised top-k
        "moe-fine": dict(n_experts=2 * e, top_k=2, expert_hidden=max(h // 2, 1), shared_hidden=max(h // 2, 1),
                         shared_gate=False, qkv_bias=False, norm_topk_prob=True,
                         **{**common, "balance": "bias", "aux_weight": 0.0}),
    }
    return replace(base, **arms[arm])


def _val_loss(model: MoEGPT, ds: TokenDataset, batch_size: int, block: int, batches: int) -> float:
    model.eval()
    losses = []
    with torch.no_grad():
        for x, y in ds.iter_eval_batches(batch_size, block, batches):
            logits, _ = model(x)
            losses.append(F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1)).item())
    model.train()
    return sum(losses) / len(losses)


class ArmTrainer:
    """Trains one arm's model in place, a slice of steps at a time (``run(until)``); ``result()`` at the end.

    Batches depend on ``seed`` only, so every arm sees the same ones. Wall time counts the training steps
    alone (not evaluation). Why slices: the arms advance in turns of ``eval_every`` steps, so a change in
    machine load (other jobs on a shared box) falls on every arm alike instead of on whichever ran then.
    """

    def __init__(self, model: MoEGPT, train: TokenDataset, val: TokenDataset, *, steps: int, batch_size: int,
                 lr: float, schedule: str, warmup: float, min_lr_ratio: float, weight_decay: float, grad_clip: float,
                 eval_every: int, eval_batches: int, seed: int):
        self.model, self.train, self.val = model, train, val
        self.steps, self.batch_size, self.lr, self.schedule = steps, batch_size, lr, schedule
        self.warmup, self.min_lr_ratio, self.grad_clip = warmup, min_lr_ratio, grad_clip
        self.eval_every, self.eval_batches = eval_every, eval_batches
        self.block = model.config.block_size
        self.tokens_per_step = batch_size * self.block
        self.opt = build_adamw(model, lr, weight_decay, (0.9, 0.95))
        self.gen = torch.Generator().manual_seed(seed)
        self.curve = [{"step": 0, "flops": 0.0, "wall_s": 0.0, "val_loss": self._val_loss()}]
        model.train()
        # One untimed forward/backward first (no optimizer step, statistics reset): the first call pays for
        # allocations, which would otherwise be charged to whichever arm runs first.
        x, y = train.get_batch(batch_size, self.block, torch.Generator().manual_seed(seed + 1))
        model(x, y)[1].backward()
        self.opt.zero_grad(set_to_none=True)
        model.router_stats(reset=True)
        for m in model.moe_layers():
            m.step_load.zero_()
        self.step, self.wall, self.assigned, self.dropped = 0, 0.0, 0.0, 0.0

    def _val_loss(self) -> float:
        return _val_loss(self.model, self.val, self.batch_size, self.block, self.eval_batches)

    def run(self, until: int) -> None:
        model, opt = self.model, self.opt
        while self.step < min(until, self.steps):
            self.step += 1
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = lr_at(self.step - 1, self.steps, self.lr, self.schedule, self.warmup, self.min_lr_ratio)
            x, y = self.train.get_batch(self.batch_size, self.block, self.gen)
            _, loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
            opt.step()
            model.update_routing_bias()
            self.wall += time.perf_counter() - t0
            if self.step % self.eval_every == 0 or self.step == self.steps:
                self._record(loss)

    def _record(self, loss: torch.Tensor) -> None:
        model = self.model
        point = {"step": self.step, "flops": model.flops_per_token() * self.tokens_per_step * self.step,
                 "wall_s": self.wall, "train_loss": model.last_losses.get("ce", loss.item())}
        layers = model.moe_layers()
        if layers:
            self.assigned += sum(float(m.assigned) for m in layers)
            self.dropped += sum(float(m.dropped) for m in layers)
            stats = model.router_stats(reset=True)
            point["load"] = [sum(col) / len(col) for col in zip(*stats["load"])]  # mean over layers
            point["load_by_layer"] = stats["load"]
            point["dropped_frac"] = stats["dropped_frac"]
        point["val_loss"] = self._val_loss()
        self.curve.append(point)

    def result(self) -> dict[str, Any]:
        last = self.curve[-1]
        result = {"curve": self.curve, "train_s": self.wall,
                  "tokens_per_s": self.tokens_per_step * self.step / self.wall if self.wall else None,
                  "final_val_loss": last["val_loss"],
                  "dropped_frac": self.dropped / self.assigned if self.assigned else None}
        if "load_by_layer" in last:
            flat = [f for layer in last["load_by_layer"] for f in layer]
            result.update(expert_load_min=min(flat), expert_load_max=max(flat),
                          unused_experts=sum(f == 0 for f in flat))
        return result


def train_arm(model: MoEGPT, train: TokenDataset, val: TokenDataset, **options: Any) -> dict[str, Any]:
    """Train one arm start to finish (``ArmTrainer``'s options); its curve and totals."""
    trainer = ArmTrainer(model, train, val, **options)
    trainer.run(trainer.steps)
    return trainer.result()


def moe_experiment(cfg: ExperimentConfig) -> Artifact:
    """Train every arm, write the table and plots, register ``<run>/experiment-moe``."""
    s = moe_settings(cfg)
    registry = Registry(cfg.runs_dir)
    tok = _tokenizer(cfg, "tokenizer")
    pcfg = _pretrain_cfg(cfg, STAGE, tok.id)
    shards = prepare_corpus(registry, cfg.run, pcfg.data, tok.dir)
    train, val = TokenDataset(shards.out_dir, "train"), TokenDataset(shards.out_dir, "val")
    m = pcfg.model
    gpt = model_config(m.preset, vocab_size=train.vocab_size, n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd,
                       block_size=m.block_size)
    if s["expert_hidden"] is None:
        s["expert_hidden"] = 8 * math.ceil(8 * gpt.n_embd / 3 / 8)
    base = MoEConfig(vocab_size=gpt.vocab_size, block_size=gpt.block_size, n_layer=gpt.n_layer, n_head=gpt.n_head,
                     n_embd=gpt.n_embd)
    out = registry.stage_dir(cfg.run, STAGE, overwrite=True)
    rows, curves = [], {}
    threads = torch.get_num_threads()
    torch.set_num_threads(pcfg.cpus_per_worker)  # as a pretraining worker would: the preset's CPU share
    try:
        _run_arms(cfg, s, pcfg, base, train, val, tok, out, rows, curves, registry)
    finally:
        torch.set_num_threads(threads)
    (out / "curves.json").write_text(json.dumps(curves))
    _plot_experts(curves, out / f"{STAGE}-experts.png")
    return write_experiment(registry, cfg, STAGE, rows, COLUMNS, [tok.id], _plot_curves(rows, curves, cfg.steps))


def _run_arms(cfg, s, pcfg, base, train, val, tok, out, rows, curves, registry) -> None:
    o = pcfg.train
    trainers = {}
    for arm in s["arms"]:
        torch.manual_seed(pcfg.seed)  # the same seed for every arm's init
        trainers[arm] = ArmTrainer(MoEGPT(arm_config(arm, base, s)), train, val, steps=cfg.steps,
                                   batch_size=o.batch_size, lr=o.lr, schedule=o.schedule, warmup=o.warmup,
                                   min_lr_ratio=o.min_lr_ratio, weight_decay=o.weight_decay, grad_clip=o.grad_clip,
                                   eval_every=max(1, o.eval_every), eval_batches=o.eval_batches, seed=pcfg.seed)
    every = max(1, o.eval_every)
    for until in range(every, cfg.steps + every, every):  # the arms take turns (see ArmTrainer)
        for trainer in trainers.values():
            trainer.run(until)
        print(f"[moe] step {min(until, cfg.steps)}/{cfg.steps}: " + ", ".join(
            f"{arm} {t.curve[-1]['val_loss']:.3f}" for arm, t in trainers.items()), flush=True)
    for arm, trainer in trainers.items():
        model, acfg, res = trainer.model, trainer.model.config, trainer.result()
        curves[arm] = res["curve"]
        rows.append({"arm": arm, "experts": f"{acfg.top_k}/{acfg.n_experts}" + ("+1" if acfg.shared_hidden else "")
                     if acfg.moe else "dense", "total_params": model.num_params(),
                     "active_params": model.active_params(), "flops_per_token": model.flops_per_token(),
                     "final_val_loss": res["final_val_loss"], "train_s": res["train_s"],
                     "tokens_per_s": res["tokens_per_s"],
                     "dropped_pct": None if res["dropped_frac"] is None else 100 * res["dropped_frac"],
                     "expert_load_min": res.get("expert_load_min"), "expert_load_max": res.get("expert_load_max"),
                     "unused_experts": res.get("unused_experts"), "balance": acfg.balance if acfg.moe else None,
                     "capacity_factor": acfg.capacity_factor if acfg.moe else None, "steps": cfg.steps,
                     "threads": pcfg.cpus_per_worker, "tokens": o.batch_size * acfg.block_size * cfg.steps})
        if arm in s["save"]:
            arm_dir = registry.stage_dir(cfg.run, arm, overwrite=True)
            save_moe_checkpoint(model, arm_dir, tokenizer_dir=tok.dir)
            registry.register(cfg.run, arm, "hf-model", parents=[tok.id], config=cfg,
                              metrics={"val_loss": res["final_val_loss"]}, extra={"experiment": STAGE})
            windows = [row.tolist() for row in next(iter(val.iter_eval_batches(4, acfg.block_size, 1)))[0]]
            check = export_and_check(arm_dir, out / "gguf" / f"{arm}-f16.gguf", windows)
            rows[-1].update(llama_top1=check["llama_top1"], llama_max_abs_diff=check["llama_max_abs_diff"],
                            gguf_why=check["why"])
        rows[-1].setdefault("llama_top1", None)


def _plot_curves(rows: list[dict[str, Any]], curves: dict[str, list[dict]], steps: int):
    fig, (ax_f, ax_t, ax_s) = plt.subplots(1, 3, figsize=(15, 4))
    for arm, pts in curves.items():
        ax_f.plot([p["flops"] for p in pts], [p["val_loss"] for p in pts], marker="o", markersize=3, label=arm)
        ax_t.plot([p["wall_s"] for p in pts], [p["val_loss"] for p in pts], marker="o", markersize=3, label=arm)
    ax_f.set(title="val loss vs training FLOPs", xlabel="FLOPs (6 x active params + attention)", ylabel="nats/token")
    ax_t.set(title="val loss vs training wall time", xlabel="seconds (eval excluded)", ylabel="nats/token")
    ax_s.bar([r["arm"] for r in rows], [r["tokens_per_s"] for r in rows], color="tab:blue")
    ax_s.set(title="training tokens/s")
    ax_s.tick_params(axis="x", rotation=30)
    for ax in (ax_f, ax_t):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"MoE vs dense, {steps} steps, same batches")
    fig.tight_layout()
    return fig


def _plot_experts(curves: dict[str, list[dict]], path) -> None:
    """Per MoE arm: a heat map of each expert's share of assignments (mean over layers) per eval interval."""
    moe = {arm: [p for p in pts if "load" in p] for arm, pts in curves.items()}
    moe = {arm: pts for arm, pts in moe.items() if pts}
    fig, axes = plt.subplots(1, max(len(moe), 1), figsize=(4.5 * max(len(moe), 1), 3.8), squeeze=False)
    for ax, (arm, pts) in zip(axes[0], moe.items()):
        grid = torch.tensor([p["load"] for p in pts]).t()  # (experts, intervals)
        im = ax.imshow(grid.numpy(), aspect="auto", cmap="viridis", vmin=0,
                       extent=(0, pts[-1]["step"], grid.shape[0] - 0.5, -0.5))
        ax.set(title=f"{arm}: expert load share", xlabel="step", ylabel="expert", yticks=range(grid.shape[0]))
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["moe_experiment", "moe_settings", "arm_config", "ArmTrainer", "train_arm", "ARMS", "DEFAULTS"]
