"""Perplexity on held-out text, the scorecard's table and deltas, and the eval entry point's errors."""
from __future__ import annotations

import json
import math

import pytest
import torch

from shared.eval.checkpoint import EvalError, require_causal_lm
from shared.eval.perplexity import _windows, hf_scorer, logged_curves, text_loss
from shared.eval.scorecard import build_scorecard, scorecard_markdown, split_tasks


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from transformers import AutoTokenizer
    from shared.model.gpt import GPT, GPTConfig
    from shared.model.hf import gpt_to_hf
    from shared.tokenizer.train import train_tokenizer
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(["def add(a, b):\n    return a + b\n"] * 20, vocab_size=300, out_dir=out)
    tok = AutoTokenizer.from_pretrained(out)
    torch.manual_seed(0)
    model = gpt_to_hf(GPT(GPTConfig(vocab_size=len(tok), block_size=16, n_layer=1, n_head=2, n_embd=16))).eval()
    return model, tok, out


def test_windows_score_every_token_after_the_first_exactly_once():
    ids = list(range(23))
    windows = _windows(ids, width=8, max_tokens=100)
    targets = [t for w in windows for t in w[1:]]
    assert targets == ids[1:]
    assert all(len(w) <= 9 for w in windows)
    assert [t for w in _windows(ids, 8, max_tokens=10) for t in w[1:]] == ids[1:11]


def test_text_loss_equals_the_mean_cross_entropy_computed_by_hand(tiny_lm):
    model, tok, _ = tiny_lm
    text = "def add(a, b):\n    return a + b\n" * 3  # longer than the 16-token context: several windows
    result = text_loss(hf_scorer(model, batch_size=2), 16, tok, text, max_tokens=10_000)
    ids = [tok.convert_tokens_to_ids("<|endoftext|>")] + tok(text).input_ids
    nll = []
    with torch.no_grad():  # one window at a time, no padding, no batching
        for start in range(0, len(ids) - 1, 16):
            w = torch.tensor([ids[start:start + 17]])
            logits = model(w[:, :-1]).logits
            nll += torch.nn.functional.cross_entropy(logits[0], w[0, 1:], reduction="none").tolist()
    assert len(nll) == len(ids) - 1 == result["tokens"]
    assert result["loss"] == pytest.approx(sum(nll) / len(nll), rel=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(result["loss"]), rel=1e-6)
    assert result["bpb"] == pytest.approx(sum(nll) / math.log(2) / len(tok.decode(ids[1:]).encode()), rel=1e-5)


def test_logged_curves_read_eval_losses_and_skip_a_torn_last_line(tmp_path):
    rows = [{"step": 0, "val_loss": 8.0}, {"step": 5, "train_loss": 6.0}, {"step": 10, "val_loss": 5.0,
                                                                          "general_loss": 5.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + '\n{"step": 1')
    assert logged_curves(tmp_path) == {"val_loss": [(0, 8.0), (10, 5.0)], "general_loss": [(10, 5.5)]}


def _result(**metrics):
    return {"metrics": metrics, "skipped": {}, "seconds": {}}


def test_scorecard_compares_each_artifact_with_its_parent():
    results = {"r/pretrain": _result(**{"perplexity/general_loss": 5.0, "x/acc": 0.25, "x/acc_stderr": 0.05,
                                        "x/n": 200}),
               "r/sft": _result(**{"perplexity/general_loss": 6.0, "x/acc": 0.5, "x/acc_stderr": 0.04,
                                   "instructions/exact_match": 0.2}),
               "r/dpo": _result(**{"perplexity/general_loss": 5.5, "x/acc": 0.75, "instructions/exact_match": 0.3})}
    card = build_scorecard(results, {"r/pretrain": None, "r/sft": "r/pretrain", "r/dpo": "r/sft"},
                           tasks=["x", "perplexity", "instructions"])
    assert list(card["metrics"]) == ["x/acc", "perplexity/general_loss", "instructions/exact_match"]  # task order
    assert card["counts"] == {"x/n": {"r/pretrain": 200, "r/sft": None, "r/dpo": None}}  # a size, not a score
    assert card["deltas"]["x/acc"] == {"r/pretrain": None, "r/sft": 0.25, "r/dpo": 0.25}
    assert card["deltas"]["instructions/exact_match"]["r/sft"] is None  # the parent has no value
    assert card["deltas"]["instructions/exact_match"]["r/dpo"] == pytest.approx(0.1)
    assert "x/acc_stderr" not in card["metrics"] and card["stderr"]["x/acc"] == {"r/pretrain": 0.05, "r/sft": 0.04}
    assert card["lower_is_better"] == ["perplexity/general_loss"]
    md = scorecard_markdown(card)
    header, _, *rows = md.splitlines()
    assert header == "| metric | pretrain | sft | dpo |"
    assert "| perplexity/general_loss ↓ | 5 | 6 (+1) | 5.5 (-0.5) |" in rows
    assert "| x/acc ↑ | 0.25 ± 0.05 | 0.5 ± 0.04 (+0.25) | 0.75 (+0.25) |" in rows
    assert "Sample sizes: x/n = 200." in md


def test_unknown_task_and_standard_task_without_data_are_clear_errors():
    with pytest.raises(EvalError, match="unknown eval task 'hellaswagg'.*hellaswag"):
        split_tasks(["perplexity", "hellaswagg"])
    with pytest.raises(EvalError, match="hellaswag with source=local need data_dir"):
        split_tasks(["hellaswag"], source="local")
    assert split_tasks(["hellaswag"], source="hub")["lm_eval"] == ["hellaswag"]


def test_only_causal_lm_checkpoints_are_evaluated(tmp_path, tiny_lm):
    _, _, tokenizer_dir = tiny_lm
    with pytest.raises(EvalError, match="not a causal language model"):
        require_causal_lm(tokenizer_dir)
    classifier = tmp_path / "rm"
    classifier.mkdir()
    (classifier / "config.json").write_text(json.dumps({"architectures": ["GPT2ForSequenceClassification"]}))
    with pytest.raises(EvalError, match="GPT2ForSequenceClassification.*not a causal language model"):
        require_causal_lm(classifier)
    (classifier / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(EvalError, match="no weights"):
        require_causal_lm(classifier)
