"""The non-training stage configs share ``JobConfig``: same job fields, same checks, every preset loads."""
from __future__ import annotations

import dataclasses

import pytest

from shared.config import CONFIGS_DIR, ConfigError, JobConfig, load_config
from shared.eval.eval_config import EvalConfig
from shared.interp.interpret_config import InterpretConfig
from shared.quantize.quantize_config import QuantizeConfig
from shared.rag.index_config import IndexConfig
from shared.tokenizer.tokenizer_config import TokenizerConfig
from shared.training.experiments import ExperimentConfig

STAGES = {"tokenizer": TokenizerConfig, "quantize": QuantizeConfig, "index": IndexConfig, "eval": EvalConfig,
          "interpret": InterpretConfig, "experiment": ExperimentConfig}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_config_is_a_job_config_with_its_own_stage(stage):
    cls = STAGES[stage]
    assert issubclass(cls, JobConfig)
    names = [f.name for f in dataclasses.fields(cls)]
    assert names[:4] == ["run", "stage", "runs_dir", "overwrite"]  # declared once, in the base
    assert cls().stage == stage


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_preset_of_the_stage_loads(stage):
    presets = sorted((CONFIGS_DIR / stage).glob("*.yaml"))
    if stage != "experiment":
        assert presets, f"no presets under configs/{stage}"
    for path in presets:
        assert isinstance(load_config(STAGES[stage], stage, path.stem), STAGES[stage])


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_run_must_be_a_plain_name(stage):
    with pytest.raises(ConfigError, match="run must be a plain name"):
        load_config(STAGES[stage], stage, None, ["run=a/b"])


def test_eval_without_a_run_means_the_newest_run():
    # run=None is eval's "the newest run" (run_eval picks it); an artifact is named by artifact=, not run=
    cfg = load_config(EvalConfig, "eval", None, ["artifact=r/sft"])
    assert cfg.run is None and cfg.artifact == "r/sft"


def test_a_typo_names_the_closest_key():
    with pytest.raises(ConfigError, match="unknown config key overwrit; did you mean overwrite?"):
        load_config(TokenizerConfig, "tokenizer", None, ["overwrit=true"])
