"""Fixtures for stage tests: a small tokenizer artifact shared by the module's tests."""
from __future__ import annotations

import pytest

from shared.config import load_config
from shared.tokenizer.tokenizer_config import TokenizerConfig


@pytest.fixture(scope="module")
def smoke_tokenizer(tmp_path_factory):
    """A 512-token tokenizer artifact in run ``t`` under a fresh runs dir; returns the runs dir."""
    from shared.tokenizer.artifact import train_tokenizer_artifact
    runs = tmp_path_factory.mktemp("runs")
    cfg = load_config(TokenizerConfig, "tokenizer", "smoke", base={"run": "t", "runs_dir": str(runs),
                                                                   "max_bytes_per_source": 100_000})
    train_tokenizer_artifact(cfg)
    return runs


@pytest.fixture(scope="module")
def pretrain_config():
    """Factory: ``pretrain_config(runs, stage, train__max_steps=10, ...)`` (``__`` nests keys)."""
    return _pretrain_config


def _pretrain_config(runs, stage: str, **overrides):
    """The smoke pretraining preset in run ``t``, small enough for a unit test."""
    from shared.training.pretrain_config import PretrainConfig
    base = {"run": "t", "stage": stage, "runs_dir": str(runs), "data": {"max_bytes": 150_000, "engine": "local"}}
    for key, value in overrides.items():
        node = base
        *parents, leaf = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return load_config(PretrainConfig, "pretrain", "smoke", base=base)


def register_random_model(runs, stage: str) -> None:
    """A random tiny GPT-2 (the smoke tokenizer's 512 ids) registered as ``t/<stage>``, parent the tokenizer:
    a model for post-training tests to start from without pretraining one."""
    import torch

    from shared.model.gpt import GPT, GPTConfig
    from shared.model.hf import save_hf_checkpoint
    from shared.registry import Registry
    registry = Registry(runs)
    tok = registry.resolve("t/tokenizer")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=48))
    save_hf_checkpoint(model, registry.stage_dir("t", stage), tokenizer_dir=tok.dir)
    registry.register("t", stage, "hf-model", parents=[tok.id])
