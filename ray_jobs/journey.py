"""``journey run``: every stage of the journey, in order, in one Ray session.

    journey run                       # tiny preset, a new run named journey-<timestamp>
    journey run preset=smoke run=ci   # seconds per stage (the e2e test)
    journey run pretrain.optim.max_steps=100 stages=[tokenizer,pretrain]
    journey run stages=[tokenizer,pretrain,cpt,sft,prefs,dpo,reward,rl,quantize,eval]   # with the optional RL stages

Each stage is the same entry point ``python -m ray_jobs.<stage>`` runs, called in-process with
``configs/<stage>/<preset>.yaml`` plus this run's name and the per-stage overrides given here.
The last stage, ``eval``, puts every model artifact of the run on the same tasks (the scorecard,
``runs/<run>/eval/scorecard.md``). Ends with a summary table (``runs/<run>/summary.md``) of every
artifact's headline metrics, followed by the scorecard.
"""
from __future__ import annotations

import datetime as _dt
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

from ray_jobs._args import run_main
from shared.config import ConfigError, help_field, load_config, parse_overrides
from shared.registry import Registry

STAGES = ("tokenizer", "pretrain", "cpt", "sft", "prefs", "dpo", "reward", "rl", "quantize", "index", "eval",
          "interpret")
DEFAULT_STAGES = ("tokenizer", "pretrain", "cpt", "sft", "prefs", "dpo", "quantize", "index", "eval",
                  "interpret")  # reward, rl optional


@dataclass
class JourneyConfig:
    run: Optional[str] = help_field(None, "run name (default journey-<timestamp>)")
    preset: str = help_field("tiny", "preset used for every stage: configs/<stage>/<preset>.yaml")
    stages: list[str] = help_field(list(DEFAULT_STAGES), f"stages to run, in order, out of {list(STAGES)}")
    runs_dir: Optional[str] = help_field(None, "artifact root (default $JOURNEY_RUNS or ./runs)")
    tokenizer: dict = help_field({}, "overrides for the tokenizer stage, e.g. tokenizer.vocab_size=2048")
    pretrain: dict = help_field({}, "overrides for the pretrain stage, e.g. pretrain.optim.max_steps=100")
    cpt: dict = help_field({}, "overrides for the continued-pretraining stage")
    sft: dict = help_field({}, "overrides for the SFT stage, e.g. sft.train.max_steps=300")
    prefs: dict = help_field({}, "overrides for the preference-pair stage, e.g. prefs.num_prompts=200")
    dpo: dict = help_field({}, "overrides for the DPO stage, e.g. dpo.beta=0.2")
    reward: dict = help_field({}, "overrides for the reward-model stage")
    rl: dict = help_field({}, "overrides for the RL stage")
    quantize: dict = help_field({}, "overrides for the quantize stage, e.g. quantize.variants=[int8,gguf-q8_0]")
    index: dict = help_field({}, "overrides for the retrieval-index stage, e.g. index.max_docs=50")
    eval: dict = help_field({}, "overrides for the scorecard stage, e.g. eval.suite_limit=100")
    interpret: dict = help_field({}, "overrides for the interpretability stage, e.g. interpret.induction_length=40")

    def validate(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"unknown stage {unknown[0]!r}; stages are {list(STAGES)}")


def _config_class(stage: str) -> type:
    from shared.tokenizer.tokenizer_config import TokenizerConfig
    from shared.training import posttrain_config as post
    from shared.eval.eval_config import EvalConfig
    from shared.interp.interpret_config import InterpretConfig
    from shared.quant.quantize_config import QuantizeConfig
    from shared.rag.index_config import IndexConfig
    from shared.training.pretrain_config import PretrainConfig
    return {"tokenizer": TokenizerConfig, "pretrain": PretrainConfig, "cpt": PretrainConfig,
            "sft": post.SFTJobConfig, "prefs": post.PrefsJobConfig, "dpo": post.DPOJobConfig,
            "reward": post.RewardJobConfig, "rl": post.RLJobConfig, "quantize": QuantizeConfig,
            "index": IndexConfig, "eval": EvalConfig, "interpret": InterpretConfig}[stage]


def _stage_runner(stage: str):
    """The ``shared`` function that runs a stage from its config (what ``ray_jobs.<stage>`` calls)."""
    import importlib
    module, fn = {"tokenizer": ("shared.tokenizer.artifact", "train_tokenizer_artifact"),
                  "pretrain": ("shared.training.runner", "run_pretraining"),
                  "cpt": ("shared.training.runner", "run_pretraining"),
                  "sft": ("shared.training.sft", "run_sft"), "prefs": ("shared.training.prefs", "run_prefs"),
                  "dpo": ("shared.training.dpo", "run_dpo"), "reward": ("shared.training.reward", "run_reward"),
                  "rl": ("shared.training.rl", "run_rl"), "quantize": ("shared.quant.stage", "run_quantize"),
                  "index": ("shared.rag.stage", "run_index"), "eval": ("shared.eval.scorecard", "run_eval"),
                  "interpret": ("shared.interp.stage", "run_interpret")}[stage]
    return getattr(importlib.import_module(module), fn)


def _stage_config(stage: str, jc: JourneyConfig, run: str):
    cls = _config_class(stage)
    base: dict[str, Any] = {"run": run, **getattr(jc, stage)}
    if jc.runs_dir:
        base["runs_dir"] = jc.runs_dir
    return load_config(cls, stage, jc.preset, base=base)


# What each stage's row shows: the numbers that say whether the stage did its job.
HEADLINES = {
    "tokenizer": ("vocab_size",),
    "pretrain": ("initial_val_loss", "val_loss", "val_bpb", "tokens_per_s"),
    "cpt": ("initial_val_loss", "val_loss", "initial_general_loss", "general_loss"),
    "sft": ("first_eval_loss", "eval_loss", "base_exact_match", "exact_match", "base_format_ok", "format_ok"),
    "prefs": ("train_pairs", "train_pairs_reference_chosen", "train_sample_exact_match"),
    "dpo": ("last_eval_rewards_accuracies", "heldout_sft_exact_match", "heldout_exact_match", "heldout_win_rate_vs_sft",
            "safety_sft_refusal_rate_harmful", "safety_refusal_rate_harmful"),
    "reward": ("eval_accuracy",),
    "rl": ("heldout_exact_match", "heldout_win_rate_vs_dpo", "safety_refusal_rate_harmful"),
    "index": ("chunks", "points", "chunks_per_s"),
    "interpret": ("pretrain/max_induction_score", "pretrain/loss_drop", "induction_formed_at_step",
                  "sft->dpo/final_cosine"),
    "quantize": ("fp32/decode_tokens_per_s", "int8/decode_tokens_per_s", "int4/decode_tokens_per_s",
                 "gguf-q8_0/decode_tokens_per_s", "gguf-q4_0/decode_tokens_per_s", "int8/ppl_delta", "int4/ppl_delta"),
}


# Variants written by the quantize stage (stage names quantize-<variant>) are read by kind.
KIND_HEADLINES = {"quantized": ("bytes", "decode_tokens_per_s", "ppl_delta", "top1_agreement"),
                  "gguf": ("bytes", "decode_tokens_per_s", "ppl_delta", "top1_agreement")}


def summary(registry: Registry, run: str) -> str:
    """Markdown table of the run's artifacts and their headline metrics."""
    lines = ["| artifact | kind | headline metrics | time (s) |", "|---|---|---|---|"]
    for a in registry.artifacts(run):
        if a.kind == "report" and a.stage in ("eval", "interpret"):
            what = ("artifacts on the same tasks: eval/scorecard.md" if a.stage == "eval"
                    else "models looked inside: interpret/interpret.md")
            lines.append(f"| {a.id} | report | {len(a.parents)} {what} | {sum(a.timings.values()):.0f} |")
            continue
        keys = HEADLINES.get(a.stage) or KIND_HEADLINES.get(a.kind, ("val_loss", "eval_loss"))
        cells = ", ".join(f"{k}={a.metrics[k]:.4g}" for k in keys if isinstance(a.metrics.get(k), (int, float)))
        lines.append(f"| {a.id} | {a.kind} | {cells} | {sum(a.timings.values()):.0f} |")
    return "\n".join(lines)


def run_journey(jc: JourneyConfig) -> str:
    run = jc.run or _dt.datetime.now().strftime("journey-%Y%m%d-%H%M%S")
    configs = {stage: _stage_config(stage, jc, run) for stage in jc.stages}  # validate all before starting
    registry = Registry(jc.runs_dir)
    t0 = time.perf_counter()
    for stage in jc.stages:
        print(f"== journey {run}: stage {stage} ==", flush=True)
        _stage_runner(stage)(configs[stage])
    table = summary(registry, run)
    scorecard = registry.root / run / "eval" / "scorecard.md"
    card = scorecard.read_text() if "eval" in jc.stages and scorecard.exists() else ""
    (registry.root / run / "summary.md").write_text(
        f"# Journey {run}\n\n{table}\n\nTotal {time.perf_counter() - t0:.0f} s.\n\n```\n{registry.lineage(run)}\n```\n"
        + (f"\n{card}" if card else ""))
    print(table)
    if card:
        print(card)
    print(registry.lineage(run))
    return run


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0

    def job():
        jc = load_config(JourneyConfig, "journey", None, base=parse_overrides(argv))
        run = run_journey(jc)
        print(f"journey {run} done: artifacts under {Registry(jc.runs_dir).root / run}")
    return run_main(job)


if __name__ == "__main__":
    sys.exit(main())
