"""``journey import``: a checkpoint made elsewhere becomes a registered artifact through the stage table."""
from __future__ import annotations

import json

from ray_jobs import cli
from shared.interp.toy import char_tokenizer, random_model
from shared.model.hf import save_hf_checkpoint
from shared.registry import Registry
from shared.stages import BY_NAME


def test_import_registers_an_hf_checkpoint(tmp_path, capsys):
    src = save_hf_checkpoint(random_model(), tmp_path / "hf", tokenizer_dir=char_tokenizer(tmp_path / "tok"))
    runs = tmp_path / "runs"
    assert cli.main(["import", str(src), "tokenizer=null", "run=mine", f"runs_dir={runs}"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{\n"):])["import"]["format"] == "hf"
    art = Registry(runs).resolve("mine/import")
    assert art.kind == BY_NAME["import"].produces and art.parents == []
    assert art.config["src"] == str(src) and art.metrics["n_params"] > 0
    # the same artifact is not replaced by accident
    assert cli.main(["import", str(src), "tokenizer=null", "run=mine", f"runs_dir={runs}"]) == 2
    assert "already exists" in capsys.readouterr().err
