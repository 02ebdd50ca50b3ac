"""Post-training configs load typed and fail early; the algorithm modules stay independent of each other."""
from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import yaml

from shared.config import ConfigError, TrainJobConfig, TrainLoopConfig, load_config, preset_path, read_yaml
from shared.training import dpo, reward, rl, sft
from shared.training.posttrain_config import (DPOJobConfig, PostTrainConfig, PostTrainLoopConfig, PrefsJobConfig,
                                              RewardJobConfig, RLJobConfig, SFTJobConfig)
from shared.training.trl_worker import TrainRows, TrlSpec

ROOT = Path(__file__).resolve().parents[3]
STAGES = {"sft": SFTJobConfig, "finetune": SFTJobConfig, "dpo": DPOJobConfig, "reward": RewardJobConfig,
          "rl": RLJobConfig, "prefs": PrefsJobConfig}
TRAINERS = {stage: cls for stage, cls in STAGES.items() if stage != "prefs"}
INDEPENDENT = ("sft", "dpo", "reward", "rl", "prefs")


def presets(stages):
    return [(stage, path.stem) for stage in stages for path in sorted((ROOT / "configs" / stage).glob("*.yaml"))]


@pytest.mark.parametrize("stage,preset", presets(STAGES))
def test_every_preset_loads(stage, preset):
    cfg = load_config(STAGES[stage], stage, preset)
    assert cfg.seed == 1234


def test_shared_bases_and_post_training_defaults():
    cfg = SFTJobConfig()
    assert isinstance(cfg, TrainJobConfig) and isinstance(cfg.train, TrainLoopConfig)
    assert (cfg.seed, cfg.precision, cfg.device) == (1234, "fp32", "cpu")
    assert (cfg.train.max_steps, cfg.train.weight_decay, cfg.train.eval_every, cfg.train.optim) == (
        200, 0.0, 50, "adamw_torch")
    assert not hasattr(cfg.train, "seed") and not hasattr(cfg.train, "precision")
    assert not hasattr(PrefsJobConfig(), "precision")  # sampling, not training: a plain JobConfig


@pytest.mark.parametrize("stage", sorted(TRAINERS))
@pytest.mark.parametrize("old,new", [("train.seed=1", "seed"), ("train.precision=bf16", "precision")])
def test_the_old_loop_keys_fail_naming_their_new_place(stage, old, new):
    with pytest.raises(ConfigError, match=rf"config key {old.split('=')[0]} was renamed: use {new} instead"):
        load_config(TRAINERS[stage], stage, "smoke" if stage != "finetune" else "tiny", [old])
    assert getattr(load_config(TRAINERS[stage], stage, None, [f"{new}={old.split('=')[1]}"]), new) in (1, "bf16")


@pytest.mark.parametrize("stage,preset", presets(STAGES))
def test_a_typo_in_a_preset_key_fails_at_load_time_with_did_you_mean(stage, preset, tmp_path):
    """Every key of the preset, top level and one section deep, misspelt in turn: each fails while loading."""
    data = read_yaml(preset_path(stage, preset))
    for key, value in data.items():
        sections = [None] + ([key] if isinstance(value, dict) else [])
        for section in sections:
            for leaf in (data[section] if section else [key]):
                typo = leaf[:-1] if len(leaf) > 3 else leaf + "x"
                where = f"{section}." if section else ""
                bad = tmp_path / f"{stage}-{preset}-{where}{leaf}.yaml"
                bad.write_text(yaml.safe_dump(_misspell(data, section, leaf, typo)))
                with pytest.raises(ConfigError, match=rf"unknown config key {where}{typo}; did you mean {where}{leaf}\?"):
                    load_config(STAGES[stage], stage, str(bad))


def _misspell(data: dict, section: str | None, leaf: str, typo: str) -> dict:
    """A copy of ``data`` with key ``leaf`` (of ``section``, or top level) renamed to ``typo``."""
    if section is None:
        return {typo if k == leaf else k: v for k, v in data.items()}
    return {**data, section: {typo if k == leaf else k: v for k, v in data[section].items()}}


def test_the_config_travels_to_the_worker_as_the_dataclass_itself():
    cfg = load_config(RLJobConfig, "rl", "smoke", ["seed=7"])
    spec = TrlSpec(algorithm=rl.ALGORITHM, config=cfg, model_path="m", rows=TrainRows([{"prompt": []}],
                                                                                    reward_model_path="r"))
    back = pickle.loads(pickle.dumps(spec))
    assert back.config == cfg and isinstance(back.config.train, PostTrainLoopConfig)
    assert back.algorithm.build_trainer is rl.build_trainer  # the function itself, by reference: no lookup by name
    assert [m.ALGORITHM.sequence_classifier for m in (sft, dpo, reward, rl)] == [False, False, True, False]
    assert issubclass(RLJobConfig, PostTrainConfig)


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, in-function imports included (``from shared.training import x`` gives x too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


@pytest.mark.parametrize("name", INDEPENDENT)
def test_the_algorithms_and_prefs_do_not_import_each_other(name):
    """What they share lives in shared.training.posttrain (docs/architecture.md, Layers)."""
    imported = _imported_modules(ROOT / "shared" / "training" / f"{name}.py")
    others = {f"shared.training.{other}" for other in INDEPENDENT if other != name}
    assert not imported & others, f"{name} imports {sorted(imported & others)}"


# ----------------------------------------------------------------------------- parallelism (issue 22)

def test_post_training_has_the_pretraining_parallelism_keys_declared_once():
    from dataclasses import fields

    from shared.training.parallel_config import ParallelismFields
    from shared.training.pretrain_config import PretrainConfig
    keys = {f.name for f in fields(ParallelismFields)}
    assert keys == {"parallelism", "fsdp_reshard_after_forward", "fsdp_cpu_offload", "activation_checkpointing",
                    "zero_offload_optimizer", "zero_offload_params"}
    for cls in (PretrainConfig, *TRAINERS.values()):
        assert issubclass(cls, ParallelismFields) and keys <= {f.name for f in fields(cls)}
    cfg = load_config(SFTJobConfig, "sft", "smoke", overrides=["parallelism=zero3", "zero_offload_optimizer=true",
                                                                  "zero_offload_params=true"])
    assert (cfg.parallel_options().zero_stage, cfg.zero_offload_params) == (3, True)


def test_parallel_arguments_map_each_strategy_onto_training_arguments():
    from shared.training.trl_worker import parallel_arguments, training_arguments
    sft_cfg = lambda *over: load_config(SFTJobConfig, "sft", "smoke", overrides=list(over))  # noqa: E731
    assert parallel_arguments(sft_cfg("parallelism=ddp", "num_workers=2")) == {}
    ds = parallel_arguments(sft_cfg("parallelism=zero2", "zero_offload_optimizer=true"))["deepspeed"]
    assert ds["zero_optimization"]["stage"] == 2 and ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    fsdp = parallel_arguments(sft_cfg("parallelism=fsdp", "fsdp_reshard_after_forward=false",
                                      "activation_checkpointing=true"))
    assert fsdp["fsdp"] is True and fsdp["accelerator_config"] == {"use_configured_state": True}  # CPU
    assert {k: fsdp["fsdp_config"][k] for k in ("version", "reshard_after_forward", "state_dict_type",
                                                 "activation_checkpointing")} == {
        "version": 2, "reshard_after_forward": False, "state_dict_type": "FULL_STATE_DICT",
        "activation_checkpointing": True}
    # method.gradient_checkpointing asks for the same thing as activation_checkpointing
    on = parallel_arguments(sft_cfg("parallelism=fsdp", "method.gradient_checkpointing=true"))
    assert on["fsdp_config"]["activation_checkpointing"] is True
    args = training_arguments(sft_cfg("parallelism=fsdp"), "/nowhere", has_eval=False)
    assert args["fsdp"] is True and "deepspeed" not in args and args["gradient_checkpointing"] is False


@pytest.mark.parametrize("override,fix", [
    ("deepspeed.zero_stage=2", "parallelism=zeroN"),
    ("deepspeed.offload_optimizer=true", "zero_offload_optimizer"),
])
def test_the_old_deepspeed_section_fails_naming_the_parallelism_keys(override, fix):
    with pytest.raises(ConfigError, match=rf"config key deepspeed was renamed: use parallelism=zero1\|zero2\|zero3 .*{fix}"):
        load_config(SFTJobConfig, "sft", "smoke", overrides=[override])


@pytest.mark.parametrize("overrides,message", [
    (["parallelism=zero4"], r"unknown strategy 'zero4'; choose one of \['ddp', 'fsdp', 'zero1', 'zero2', 'zero3'\]"),
    (["parallelism=fsdp", "fsdp_cpu_offload=true"], "fsdp_cpu_offload needs CUDA"),
    (["parallelism=fsdp", "method.method=qlora"], "parallelism=fsdp does not shard method.method=qlora.*use "
                                                   "parallelism=ddp or zero1|zero2"),
    (["parallelism=ddp", "zero_offload_optimizer=true"], "need parallelism=zero1, zero2 or zero3"),
    (["parallelism=zero2", "zero_offload_params=true"], "zero_offload_params needs parallelism=zero3"),
    (["parallelism=zero2", "fsdp_reshard_after_forward=false"], "apply to parallelism=fsdp only"),
])
def test_unsupported_parallelism_combinations_are_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SFTJobConfig, "sft", "smoke", overrides=overrides)


def test_one_worker_runs_any_strategy_and_gpu_allows_fsdp_offload():
    # num_workers=1: nothing is divided, but the strategy runs for real (offload still moves state to the host)
    for strategy in ("fsdp", "zero1", "zero3"):
        assert load_config(SFTJobConfig, "sft", "smoke", overrides=[f"parallelism={strategy}",
                                                                     "num_workers=1"]).parallelism == strategy
    cfg = load_config(SFTJobConfig, "sft", "smoke", overrides=["parallelism=fsdp", "fsdp_cpu_offload=true",
                                                                "use_gpu=true"])
    assert cfg.fsdp_cpu_offload
