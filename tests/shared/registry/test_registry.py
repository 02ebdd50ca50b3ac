import json

import pytest

from shared.registry import MANIFEST, ArtifactNotFound, Registry


def _make(reg, run, stage, parents=(), **metrics):
    reg.stage_dir(run, stage)
    return reg.register(run, stage, "hf-model", parents=list(parents), metrics=metrics, config={"k": 1})


def test_register_resolve_and_lineage(tmp_path):
    reg = Registry(tmp_path)
    tok = _make(reg, "r1", "tokenizer", vocab_size=512)
    pre = _make(reg, "r1", "pretrain", [tok.id], val_loss=3.0)
    cpt = _make(reg, "r1", "cpt", ["pretrain"], val_loss=2.5)
    assert cpt.parents == ["r1/pretrain"]
    assert reg.resolve("pretrain").id == "r1/pretrain"
    assert reg.resolve("r1/cpt").metrics["val_loss"] == 2.5
    assert reg.resolve(pre.path).id == pre.id
    assert [a.id for a in reg.ancestors(cpt)] == ["r1/pretrain", "r1/tokenizer"]
    tree = reg.lineage("r1").splitlines()
    assert tree[0].startswith("r1/tokenizer") and "└─ r1/pretrain" in tree[1] and "└─ r1/cpt" in tree[2]
    manifest = json.loads((reg.root / "r1" / "cpt" / MANIFEST).read_text())
    assert manifest["config"] == {"k": 1} and manifest["stage"] == "cpt"


def test_latest_prefers_newest_run(tmp_path):
    reg = Registry(tmp_path)
    _make(reg, "old", "pretrain")
    _make(reg, "new", "pretrain")
    assert reg.resolve("latest:pretrain").run == "new"
    assert reg.resolve("pretrain", run="old").run == "old"


def test_unfinished_stage_is_invisible_and_errors_list_existing(tmp_path):
    reg = Registry(tmp_path)
    _make(reg, "r", "tokenizer")
    reg.stage_dir("r", "pretrain")  # started, never registered (a crash)
    with pytest.raises(ArtifactNotFound, match=r"no artifact named 'pretrain'.*existing: r/tokenizer"):
        reg.resolve("pretrain")


def test_finished_artifact_is_not_overwritten_silently(tmp_path):
    reg = Registry(tmp_path)
    _make(reg, "r", "tokenizer")
    with pytest.raises(FileExistsError, match="overwrite=true"):
        reg.stage_dir("r", "tokenizer")
    reg.stage_dir("r", "tokenizer", overwrite=True)
    with pytest.raises(ArtifactNotFound):
        reg.resolve("r/tokenizer")  # unfinished while being redone


def test_bad_names_and_corrupt_manifest(tmp_path):
    reg = Registry(tmp_path)
    with pytest.raises(ValueError, match="run name"):
        reg.stage_dir("../escape", "x")
    art = _make(reg, "r", "s")
    (art.dir / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactNotFound, match="corrupt"):
        Registry.load(art.dir)
