"""The TransformerLens bridge, the induction detector, attention drawings, stage diffs and bad input."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2LMHeadModel

from shared.interp.attention import write_attention
from shared.interp.bridge import InterpError, check_head, encode, load_bridge
from shared.interp.diff import compare, logit_lens
from shared.interp.induction import measure, phase_change, snapshots
from shared.model.hf import CheckpointError, load_gpt, save_hf_checkpoint
from shared.interp.toy import plant_induction, random_model


def _measure(model, length=20):
    return measure(model, length, batch=8, seed=0, threshold=0.4, prev_threshold=0.4)


def test_bridge_logits_match_hf_and_our_model(random_dir):
    model = load_bridge(random_dir)
    ids = torch.randint(0, 32, (2, 40), generator=torch.Generator().manual_seed(0))
    hf = GPT2LMHeadModel.from_pretrained(random_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        ours, hf_logits = load_gpt(random_dir)(ids)[0], hf(ids).logits
        bridge_logits = model.bridge(ids)
    assert bridge_logits.shape == (2, 40, 32)
    torch.testing.assert_close(bridge_logits, hf_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(bridge_logits, ours, atol=1e-4, rtol=0)
    assert (model.n_layers, model.n_heads, model.n_ctx) == (2, 2, 48)


def test_detector_finds_the_planted_induction_head_and_random_init_scores_chance(planted_dir, random_dir):
    planted = _measure(load_bridge(planted_dir))
    assert planted.heads == [(1, 0)] and planted.prev_heads == [(0, 0)]
    assert planted.best[2] > 0.8 and float(planted.prev_token[0, 0]) > 0.8
    assert planted.loss_drop > 3.0  # the second copy is predicted, the first cannot be
    rand = _measure(load_bridge(random_dir))
    assert rand.heads == [] and rand.prev_heads == []
    assert rand.best[2] < 2 * rand.chance and float(rand.prev_token.max()) < 4 * rand.chance
    assert abs(rand.loss_drop) < 0.2
    # chance is the uniform head's score: 1/(i+1) averaged over the scored queries, then over the lengths
    # 20, 21 and 23 (a start token first)
    assert rand.chance == pytest.approx(sum(sum(1 / (q + 1) for q in range(n + 1, 2 * n + 1)) / n
                                            for n in (20, 21, 23)) / 3)


def test_phase_change_over_snapshots(tmp_path, tokenizer_dir):
    art = save_hf_checkpoint(plant_induction(), tmp_path / "pretrain", tokenizer_dir=tokenizer_dir)
    save_hf_checkpoint(random_model(), art / "snapshots" / "step_000000")
    save_hf_checkpoint(plant_induction(gain=0.05), art / "snapshots" / "step_000010")  # circuit too weak yet
    assert [s for s, _ in snapshots(art)] == [0, 10]
    phase = phase_change(snapshots(art), load_bridge(art), 20, 20, 4, 0, 0.4, 0.4, load=load_bridge)
    assert phase.steps == [0, 10, 20]
    scores = [r.best[2] for r in phase.results]
    assert scores[0] < 0.1 < 0.8 < scores[2] and scores[1] < 0.4
    assert phase.formed_at(0.4) == 20
    assert phase.to_dict()[-1]["loss_drop"] > 3.0


def test_attention_pngs_and_offline_html(planted_dir, tmp_path):
    model = load_bridge(planted_dir, "planted")
    files = write_attention(model, "abc abc", tmp_path, layer=1, head=0)
    assert sorted(files) == ["grid", "head_1_0", "html", "layer_0", "layer_1"]
    assert all(p.stat().st_size > 2000 for p in files.values())
    page = files["html"].read_text()
    assert "CircuitsVis.render" in page and "unpkg.com" not in page  # JavaScript inlined, no CDN
    assert '"L1H0"' in page and json.dumps(["<|endoftext|>", "a", "b", "c", " ", "a", "b", "c"]) in page
    # The planted induction head attends from the second "b" to the "c" after the first one.
    ids = encode(model, "abc abc")
    _, cache = model.bridge.run_with_cache(torch.tensor([ids]))
    assert float(cache["blocks.1.attn.hook_pattern"][0, 0, 6, 3]) > 0.9


def test_stage_diff_and_logit_lens(planted_dir, random_dir, tokenizer_dir, tmp_path):
    planted, rand = load_bridge(planted_dir, "planted"), load_bridge(random_dir, "random")
    prompts = [encode(planted, "hello world hello"), encode(planted, "abc abc")]
    same = compare(planted, planted, prompts)
    assert min(same.cosine) > 0.9999 and max(same.distance) < 1e-5
    assert float(same.head_change.max()) < 1e-5 and max(same.weight_change.values()) == 0.0
    moved = compare(planted, rand, prompts)
    assert max(moved.cosine) < 0.5 and moved.top_heads(1)[0][0] in ("L0H0", "L1H0")  # the planted heads moved most
    assert set(moved.weight_change) >= {"wte", "wpe", "L0.attn.c_attn", "L1.mlp.c_proj"}
    labels, top, prob = logit_lens(planted, encode(planted, "abcdefg abcdef"))
    assert labels == ["0_pre", "1_pre", "final_post"]
    assert top[-1] == encode(planted, "g")[-1] and prob[-1] > 0.5  # the copy of what followed "f" before
    other = load_bridge(save_hf_checkpoint(random_model(), tmp_path / "wide", tokenizer_dir=tokenizer_dir), "x")
    other.bridge.cfg.n_layers = 3  # pretend another shape
    with pytest.raises(InterpError, match="shapes differ"):
        compare(planted, other, prompts)


def test_bad_input_gives_one_clear_error_each(planted_dir, tmp_path):
    not_gpt2 = tmp_path / "llama"
    not_gpt2.mkdir()
    (not_gpt2 / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(CheckpointError, match="llama model, not GPT-2"):
        load_bridge(not_gpt2)
    model = load_bridge(planted_dir)
    with pytest.raises(InterpError, match="the prompt is 61 tokens but .* context of 48; shorten it"):
        encode(model, "a" * 60)
    with pytest.raises(InterpError, match=r"layer 2 is out of range: .* layers 0\.\.1"):
        check_head(model, 2, 0)
    with pytest.raises(InterpError, match=r"head -1 is out of range: .* heads 0\.\.1"):
        write_attention(model, "abc", tmp_path, layer=0, head=-1)
    with pytest.raises(InterpError, match="repeated sequence .* is 67 tokens"):
        _measure(model, length=30)
