"""The stage table: every stage of the journey, and the stages outside it, listed once.

``journey <stage>``, ``journey run``, ``journey submit``, ``journey --help`` and the
``python -m ray_jobs.<entry>`` modules all read this table (docs/architecture.md, Stages). Adding a
stage is one ``Stage`` entry here plus its entry module ``ray_jobs/<entry>.py``
(``tests/ray_jobs/test_stages.py`` checks the two against each other).

A stage is a config dataclass (presets under ``configs/<presets>/``) and a run function taking
that config and returning the registered artifact. Stage-specific checks live in the config's
``validate``, so every way into a stage refuses the same configs (``CPTConfig`` requires
``init_from`` whether it comes from ``journey cpt`` or ``journey run``).

The table is in journey order: ``journey run`` runs the ``"default"`` stages in this order, and the
``"optional"`` ones when ``stages=[...]`` names them; ``"outside"`` stages are commands of their
own that no journey runs.

The config classes and run functions are reached through the small functions below, whose bodies
import them: those modules pull in torch, transformers, TRL or Ray (2-3 s each, measured with
``python -X importtime``), which ``journey --help`` and a config error must not pay. They are real
references all the same: go-to-definition leads from the table to the function that runs.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from shared.config import ConfigError

JourneyPart = Literal["default", "optional", "outside"]


@dataclass(frozen=True)
class Stage:
    """One stage: what it is, how it is configured and run, what it reads and writes."""

    name: str  # `journey <name>`, the artifact's stage name, the key of `journey run <name>.key=value`
    summary: str  # one line for `journey --help`
    config_class: Callable[[], type]  # returns the config dataclass (imported on call: see the module docstring)
    run: Optional[Callable[[Any], Any]]  # run(config) -> the registered Artifact; None: only `commands` run
    produces: str  # the kind of artifact it registers
    consumes: tuple[str, ...] = ()  # the stages whose artifacts its presets read (init_from, data, models, ...)
    headlines: tuple[str, ...] = ()  # metrics the `journey run` summary shows for its artifact
    journey: JourneyPart = "default"
    entry: str = ""  # its `python -m ray_jobs.<entry>` module (what `ray job submit` runs); default: name
    presets: Optional[str] = ""  # configs/<presets>/*.yaml; default: name; None: it takes no --config
    usage: str = ""  # the arguments after `journey <name>` in --help; default "[--config P] [k=v]"
    commands: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)  # `journey <name> <command>`

    def __post_init__(self) -> None:
        # Defaults that follow from the name, filled in once so every reader sees the final value.
        if not self.entry:
            object.__setattr__(self, "entry", self.name)
        if self.presets == "":
            object.__setattr__(self, "presets", self.name)
        if not self.usage:
            usage = "[--config P] [k=v]" if self.presets else "[k=v]"
            if self.commands:
                usage = f"{'|'.join(self.commands)} {usage}"
            object.__setattr__(self, "usage", usage)

    @property
    def config(self) -> type:
        """The stage's config dataclass."""
        return self.config_class()

    @property
    def in_journey(self) -> bool:
        return self.journey != "outside"


# --- config classes and run functions, imported on first use (see the module docstring) -------------------

def _tokenizer_config() -> type:
    from shared.tokenizer.tokenizer_config import TokenizerConfig
    return TokenizerConfig


def _run_tokenizer(cfg):
    from shared.tokenizer.artifact import train_tokenizer_artifact
    return train_tokenizer_artifact(cfg)


def _pretrain_config() -> type:
    from shared.training.pretrain_config import PretrainConfig
    return PretrainConfig


def _cpt_config() -> type:
    from shared.training.pretrain_config import CPTConfig
    return CPTConfig


def _run_pretraining(cfg):
    from shared.training.runner import run_pretraining
    return run_pretraining(cfg)


def _sft_config() -> type:
    from shared.training.posttrain_config import SFTJobConfig
    return SFTJobConfig


def _run_sft(cfg):
    from shared.training.sft import run_sft
    return run_sft(cfg)


def _prefs_config() -> type:
    from shared.training.posttrain_config import PrefsJobConfig
    return PrefsJobConfig


def _run_prefs(cfg):
    from shared.training.prefs import run_prefs
    return run_prefs(cfg)


def _dpo_config() -> type:
    from shared.training.posttrain_config import DPOJobConfig
    return DPOJobConfig


def _run_dpo(cfg):
    from shared.training.dpo import run_dpo
    return run_dpo(cfg)


def _reward_config() -> type:
    from shared.training.posttrain_config import RewardJobConfig
    return RewardJobConfig


def _run_reward(cfg):
    from shared.training.reward import run_reward
    return run_reward(cfg)


def _rl_config() -> type:
    from shared.training.posttrain_config import RLJobConfig
    return RLJobConfig


def _run_rl(cfg):
    from shared.training.rl import run_rl
    return run_rl(cfg)


def _quantize_config() -> type:
    from shared.quantize.quantize_config import QuantizeConfig
    return QuantizeConfig


def _run_quantize(cfg):
    from shared.quantize.stage import run_quantize
    return run_quantize(cfg)


def _index_config() -> type:
    from shared.rag.index_config import IndexConfig
    return IndexConfig


def _run_index(cfg):
    from shared.rag.stage import run_index
    return run_index(cfg)


def _eval_config() -> type:
    from shared.eval.eval_config import EvalConfig
    return EvalConfig


def _run_eval(cfg):
    from shared.eval.scorecard import run_eval
    return run_eval(cfg)


def _interpret_config() -> type:
    from shared.interp.interpret_config import InterpretConfig
    return InterpretConfig


def _run_interpret(cfg):
    from shared.interp.stage import run_interpret
    return run_interpret(cfg)


def _import_config() -> type:
    from shared.model.import_stage import ImportConfig
    return ImportConfig


def _run_import(cfg):
    from shared.model.import_stage import run_import
    return run_import(cfg)


def _experiment_config() -> type:
    from shared.training.experiments import ExperimentConfig
    return ExperimentConfig


def _vocab_size_experiment(cfg):
    from shared.training.experiments import vocab_size_experiment
    return vocab_size_experiment(cfg)


def _lr_schedule_experiment(cfg):
    from shared.training.experiments import lr_schedule_experiment
    return lr_schedule_experiment(cfg)


def _moe_experiment(cfg):
    from shared.training.moe_experiment import moe_experiment
    return moe_experiment(cfg)


def _parallelism_experiment(cfg):
    # The memory planner is the experiment's theory; training may not import shared.plan (a later layer),
    # the stage table may, so it hands the planner in.
    from shared.plan.memory import ModelShape, Strategy, largest_micro_batch, strategy_bytes
    from shared.training.parallel_experiment import parallelism_experiment

    def shape_of(model):
        return ModelShape(**{k: model[k] for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")})

    def theory(strategy, reshard, model, ranks, batch, seq, precision):
        # The experiment measures a rank's state between backward and the optimizer step.
        return strategy_bytes(shape_of(model), Strategy(strategy, reshard_after_forward=reshard), ranks, batch, seq,
                              precision).state_after_backward

    def planner_batch(strategy, reshard, model, ranks, seq, precision, budget, on_gpu):
        return largest_micro_batch(shape_of(model), Strategy(strategy, reshard_after_forward=reshard), ranks, seq,
                                   precision, budget, on_gpu=on_gpu)
    return parallelism_experiment(cfg, theory, planner_batch)


def _finetune_methods_experiment(cfg):
    from shared.training.finetune_experiment import finetune_methods_experiment
    return finetune_methods_experiment(cfg)


# --- the table, in journey order ------------------------------------------------------------------------

STAGES: tuple[Stage, ...] = (
    Stage("tokenizer", "byte-level BPE with the chat/tool special tokens",
          _tokenizer_config, _run_tokenizer, produces="tokenizer", headlines=("vocab_size",),
          usage="[train] [--config P] [k=v] | compare SPEC... [out=DIR]"),
    Stage("pretrain", "pretrain a GPT-2 from scratch under Ray Train",
          _pretrain_config, _run_pretraining, produces="hf-model", consumes=("tokenizer",),
          headlines=("initial_val_loss", "val_loss", "val_bpb", "tokens_per_s")),
    Stage("cpt", "continued pretraining on code from a model (init_from, e.g. pretrain)",
          _cpt_config, _run_pretraining, produces="hf-model", consumes=("tokenizer", "pretrain"),
          headlines=("initial_val_loss", "val_loss", "initial_general_loss", "general_loss")),
    Stage("sft", "supervised fine-tuning with TRL",
          _sft_config, _run_sft, produces="hf-model", consumes=("cpt",),
          headlines=("first_eval_loss", "eval_loss", "base_exact_match", "exact_match", "base_format_ok",
                     "format_ok")),
    Stage("prefs", "preference pairs from the model's own samples",
          _prefs_config, _run_prefs, produces="dataset", consumes=("sft",),
          headlines=("train_pairs", "train_pairs_reference_chosen", "train_sample_exact_match")),
    Stage("dpo", "DPO with TRL",
          _dpo_config, _run_dpo, produces="hf-model", consumes=("sft", "prefs"),
          headlines=("last_eval_rewards_accuracies", "heldout_sft_exact_match", "heldout_exact_match",
                     "heldout_win_rate_vs_sft", "safety_sft_refusal_rate_harmful", "safety_refusal_rate_harmful")),
    Stage("reward", "reward model with TRL",
          _reward_config, _run_reward, produces="reward-model", consumes=("sft", "prefs"),
          headlines=("eval_accuracy",), journey="optional"),
    Stage("rl", "GRPO / RLOO against the reward model",
          _rl_config, _run_rl, produces="hf-model", consumes=("dpo", "reward"),
          headlines=("heldout_exact_match", "heldout_win_rate_vs_dpo", "safety_refusal_rate_harmful"),
          journey="optional"),
    Stage("quantize", "INT8/INT4 (engine), GGUF F16/Q8_0/Q4_0 (llama.cpp), compared",
          _quantize_config, _run_quantize, produces="report", consumes=("dpo",),
          headlines=("fp32/decode_tokens_per_s", "int8/decode_tokens_per_s", "int4/decode_tokens_per_s",
                     "gguf-q8_0/decode_tokens_per_s", "gguf-q4_0/decode_tokens_per_s", "int8/ppl_delta",
                     "int4/ppl_delta")),
    Stage("index", "retrieval index: chunk, embed, Qdrant",
          _index_config, _run_index, produces="index", headlines=("chunks", "points", "chunks_per_s")),
    # eval and interpret read every model of the run that exists (eval also the index, for its rag task).
    Stage("eval", "scorecard of a run / evaluate one artifact",
          _eval_config, _run_eval, produces="report",
          consumes=("pretrain", "cpt", "sft", "dpo", "rl", "quantize", "index"), entry="evaluate",
          usage="all|ARTIFACT [--config P] [k=v]"),
    Stage("interpret", "attention, induction heads, stage diffs",
          _interpret_config, _run_interpret, produces="report", consumes=("pretrain", "cpt", "sft", "dpo"),
          headlines=("pretrain/max_induction_score", "pretrain/loss_drop", "induction_formed_at_step",
                     "sft->dpo/final_cosine"),
          usage="[attention A|induction A|diff A B] [--config P] [k=v]"),
    # Outside the journey: commands of their own over the same registry.
    Stage("import", "import a nanoGPT / llm.c / HF checkpoint",
          _import_config, _run_import, produces="hf-model", journey="outside", entry="import_ckpt",
          presets=None, usage="SRC [k=v]"),
    Stage("finetune", "full / LoRA / QLoRA, DeepSpeed ZeRO",
          _sft_config, _run_sft, produces="hf-model", consumes=("cpt",), journey="outside"),
    Stage("experiment", "controlled experiments over pretraining and fine-tuning",
          _experiment_config, None, produces="experiment", journey="outside", entry="experiments",
          commands={"vocab-size": _vocab_size_experiment, "lr-schedules": _lr_schedule_experiment,
                    "finetune-methods": _finetune_methods_experiment, "moe": _moe_experiment,
                    "parallelism": _parallelism_experiment}),
)

BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
#: ``journey run``'s stages: every one it can run, and the ones it runs by default.
JOURNEY: tuple[str, ...] = tuple(s.name for s in STAGES if s.in_journey)
DEFAULT_JOURNEY: tuple[str, ...] = tuple(s.name for s in STAGES if s.journey == "default")


def unknown_stage(name: str, known: tuple[str, ...] | list[str]) -> ConfigError:
    """The error for a stage name that is not one of ``known``, with the closest as a did-you-mean."""
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(f"unknown stage {name!r}; {hint}stages are {list(known)}")


def get(name: str) -> Stage:
    """The stage called ``name``; ConfigError with a did-you-mean otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise unknown_stage(name, list(BY_NAME)) from None


__all__ = ["BY_NAME", "DEFAULT_JOURNEY", "JOURNEY", "JourneyPart", "STAGES", "Stage", "get", "unknown_stage"]
