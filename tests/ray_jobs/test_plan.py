"""``journey plan``: resolves every stage like ``journey run``, prints the plan, and exits 0 / 1 / 2."""
from __future__ import annotations

import json

import pytest

from ray_jobs import plan as plan_cli
from shared.plan import visible_gpus
from shared.stages import DEFAULT_JOURNEY
from shared.registry import Registry

NO_GPU = not visible_gpus()


def _run(capsys, *argv):
    code = plan_cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_tiny_preset_plans_every_stage_with_no_problems(capsys, runs_dir):
    code, out, _ = _run(capsys, "preset=tiny", f"runs_dir={runs_dir}", "check_hub=false")
    assert code == 0, out
    assert "no problems found" in out
    for stage in DEFAULT_JOURNEY:
        assert f"\n{stage}:" in out
    assert "1.3M L4 d128 h4 V4096 T128" in out  # the tiny model, with the tiny tokenizer's vocabulary


def test_json_output_is_machine_readable(capsys, runs_dir):
    code, out, _ = _run(capsys, "preset=tiny", "stages=[tokenizer,pretrain]", f"runs_dir={runs_dir}", "--json")
    data = json.loads(out)
    assert code == 0 and data["problems"] == []
    pretrain = data["stages"][1]
    assert pretrain["stage"] == "pretrain" and pretrain["steps"] == 600
    assert pretrain["tokens"] == 600 * 16 * 128  # steps x batch x block
    mem = pretrain["memory"]
    assert mem["total"] == pytest.approx(mem["weights"] + mem["gradients"] + mem["optimizer"] + mem["activations"])


def test_a_missing_preset_is_a_problem_with_its_fix_and_exit_1(capsys, runs_dir):
    code, out, _ = _run(capsys, "preset=gpt2-350m", "stages=[tokenizer,pretrain]", f"runs_dir={runs_dir}",
                        "tokenizer.vocab_size=4096", "check_hub=false")
    assert code == 1
    assert "[tokenizer] no 'gpt2-350m' preset" in out
    assert "write configs/tokenizer/gpt2-350m.yaml" in out
    assert "pretrain.tokenizer=tokenizer" not in out  # no cascade: pretrain counts tokenizer as planned


def test_config_errors_exit_2(capsys, runs_dir):
    assert _run(capsys, "stages=[pretrian]", f"runs_dir={runs_dir}")[0] == 2
    code, _, err = _run(capsys, "pretrain.train.lrr=1", f"runs_dir={runs_dir}")
    assert code == 2 and "did you mean" in err


def test_help_states_the_exit_codes(capsys):
    code, out, _ = _run(capsys, "--help")
    assert code == 0 and "1 when problems were found" in out and "2 on a config error" in out


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU problem")
def test_a_gpu_stage_on_a_machine_without_one_is_a_problem(capsys, runs_dir):
    code, out, _ = _run(capsys, "preset=tiny", "stages=[tokenizer,pretrain]", "pretrain.use_gpu=true",
                        f"runs_dir={runs_dir}")
    assert code == 1 and "[pretrain] use_gpu=true but this machine has no CUDA GPU" in out
    assert "pretrain.use_gpu=false" in out


def test_memory_above_the_gpu_is_a_problem(capsys, runs_dir):
    code, out, _ = _run(capsys, "preset=tiny", "stages=[tokenizer,pretrain]", "pretrain.use_gpu=true",
                        "pretrain.train.batch_size=8192", "gpu=L4", f"runs_dir={runs_dir}")
    assert code == 1 and "GB per GPU, the L4 has 24 GB" in out and "pretrain.train.grad_accum" in out


def test_a_model_whose_vocabulary_does_not_match_the_tokenizer_is_found(capsys, runs_dir):
    registry = Registry(runs_dir)
    out_dir = registry.stage_dir("imp", "import")
    (out_dir / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 4096, "n_positions": 128,
                                                     "n_layer": 4, "n_head": 4, "n_embd": 128}))
    registry.register("imp", "import", "hf-model")
    code, out, _ = _run(capsys, "preset=tiny", "stages=[tokenizer,cpt]", "tokenizer.vocab_size=8192",
                        "cpt.init_from=imp/import", f"runs_dir={runs_dir}")
    assert code == 1
    assert "vocabulary mismatch: the model (imp/import) has 4,096 tokens, the tokenizer (stage tokenizer of this " \
           "plan) 8,192" in out
    assert "cpt.tokenizer=imp/import" in out
    # the same model with a tokenizer of its size plans cleanly; init_from= drops tokenizer and pretrain
    code, out, _ = _run(capsys, "preset=tiny", "stages=[tokenizer,cpt]", "cpt.init_from=imp/import",
                        f"runs_dir={runs_dir}")
    assert code == 0, out
    assert plan_cli.load_config(plan_cli.PlanConfig, "journey", None, base={"init_from": "imp/import"}).stages == \
        [s for s in DEFAULT_JOURNEY if s not in ("tokenizer", "pretrain")]
