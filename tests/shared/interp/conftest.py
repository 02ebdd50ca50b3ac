"""Tiny GPT-2 checkpoints for the interpretability tests (``shared.interp.toy``): planted induction, random."""
from __future__ import annotations

import pytest

from shared.interp.toy import char_tokenizer, plant_induction, random_model
from shared.model.hf import save_hf_checkpoint


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    return char_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def planted_dir(tmp_path_factory, tokenizer_dir):
    return save_hf_checkpoint(plant_induction(), tmp_path_factory.mktemp("planted"), tokenizer_dir=tokenizer_dir)


@pytest.fixture(scope="session")
def random_dir(tmp_path_factory, tokenizer_dir):
    return save_hf_checkpoint(random_model(), tmp_path_factory.mktemp("random"), tokenizer_dir=tokenizer_dir)
