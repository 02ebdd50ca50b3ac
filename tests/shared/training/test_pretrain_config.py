"""The pretraining config: the shared job base, the ``train:`` section, and old keys that name their new home."""
from __future__ import annotations

import pytest

from shared.config import CONFIGS_DIR, ConfigError, TrainJobConfig, TrainLoopConfig, load_config, to_dict
from shared.training.pretrain_config import CPTConfig, PretrainConfig, PretrainLoopConfig
from shared.training.schedules import SCHEDULES


def test_pretrain_config_uses_the_shared_bases_with_its_own_defaults():
    cfg = PretrainConfig()
    assert isinstance(cfg, TrainJobConfig) and isinstance(cfg.train, TrainLoopConfig)
    # the defaults pretraining had before the shared base: unchanged numbers out of unchanged configs
    assert (cfg.stage, cfg.seed, cfg.precision, cfg.num_workers, cfg.cpus_per_worker) == (
        "pretrain", 1337, "auto", 1, 2)
    t = cfg.train
    assert (t.max_steps, t.batch_size, t.grad_accum, t.lr, t.schedule, t.warmup) == (1000, 16, 1, 1e-3, "cosine", 0.05)
    assert (t.weight_decay, t.min_lr_ratio, t.decay_ratio, t.beta1, t.beta2, t.grad_clip) == (
        0.1, 0.1, 0.2, 0.9, 0.95, 1.0)
    assert (t.eval_every, t.log_every, t.eval_batches, t.ckpt_every, t.snapshot_every) == (100, 10, 8, 200, 0)
    assert PretrainLoopConfig.SCHEDULES == SCHEDULES
    assert CPTConfig().stage == "cpt"


@pytest.mark.parametrize("override, new", [
    ("optim.lr=1e-3", "train"),
    ("optim.max_steps=5", "train"),
    ("eval_every=5", "train.eval_every"),
    ("log_every=5", "train.log_every"),
    ("eval_batches=5", "train.eval_batches"),
    ("ckpt_every=5", "train.ckpt_every"),
    ("snapshot_every=5", "train.snapshot_every"),
])
def test_an_old_key_fails_at_load_time_naming_its_new_key(override, new):
    old = override.split("=")[0].split(".")[0]
    with pytest.raises(ConfigError, match=rf"config key {old} was renamed: use {new} instead"):
        load_config(PretrainConfig, "pretrain", "smoke", [override])


def test_an_old_key_in_a_preset_file_fails_the_same_way(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("optim: {max_steps: 10}\n")
    with pytest.raises(ConfigError, match="config key optim was renamed: use train instead"):
        load_config(CPTConfig, "cpt", str(path), ["init_from=pretrain"])


@pytest.mark.parametrize("override, message", [
    ("train.eval_evry=5", "unknown config key train.eval_evry; did you mean train.eval_every?"),
    ("train.snapshot_evry=5", "unknown config key train.snapshot_evry; did you mean train.snapshot_every?"),
    ("model.n_layers=2", "unknown config key model.n_layers; did you mean model.n_layer?"),
    ("data.max_byte=5", "unknown config key data.max_byte; did you mean data.max_bytes?"),
])
def test_a_nested_typo_fails_with_did_you_mean(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, "pretrain", "tiny", [override])
    assert message in str(err.value)


@pytest.mark.parametrize("override, message", [
    ("train.schedule=step", "train.schedule: unknown schedule 'step'"),
    ("train.eval_batches=0", "train.eval_batches must be >= 1"),
    ("train.ckpt_every=0", "train.ckpt_every must be >= 1"),
    ("train.eval_every=0", "train.eval_every must be >= 1"),
    ("train.snapshot_every=-1", "train.snapshot_every must be >= 0"),
    ("train.lr=0", "train.lr must be > 0"),
    ("num_workers=0", "num_workers must be >= 1"),
    ("run=a/b", "run must be a plain name"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(PretrainConfig, "pretrain", "smoke", [override])


def test_cpt_needs_init_from():
    with pytest.raises(ConfigError, match="continued pretraining needs init_from"):
        load_config(CPTConfig, "cpt", "smoke", ["init_from=null"])


@pytest.mark.parametrize("stage, cls", [("pretrain", PretrainConfig), ("cpt", CPTConfig)])
def test_every_pretraining_preset_loads(stage, cls):
    presets = sorted((CONFIGS_DIR / stage).glob("*.yaml"))
    assert presets
    for path in presets:
        cfg = load_config(cls, stage, path.stem)
        assert cfg.stage == stage, path
        # the resolved config round-trips through its manifest form (what the registry stores)
        assert load_config(cls, stage, None, base=to_dict(cfg)) == cfg
