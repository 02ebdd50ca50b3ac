"""lm-evaluation-harness against the served stack, as a user evaluating our API would run it.

- ``local-completions`` (log-likelihood through ``POST /v1/completions``: token-id prompts,
  ``echo``, ``logprobs``) on our offline multiple-choice task ``journey_facts_mc`` gives the same
  accuracy as lm-eval's own ``hf`` backend on the same artifact's weights (within 1 point).
- ``local-chat-completions`` runs a generation task through ``POST /v1/chat/completions``.
- The raw ``/v1/completions`` surface: string and batch prompts, ``max_tokens=0``, ``stop``, and
  the parameters it refuses with a 400 naming them.
"""
from __future__ import annotations

import json
import logging

import httpx
import pytest

from shared.registry import Registry
from tests.services.conftest import HELLO_ANSWER

LIMIT = 40


@pytest.fixture(scope="module")
def artifact_dir(stack):
    _, _, runs = stack
    return Registry(runs).resolve("t/sft").dir


@pytest.fixture(scope="module")
def facts_task(tmp_path_factory):
    from shared.eval.harness import build_task_specs
    work = tmp_path_factory.mktemp("lm_eval_tasks")
    return build_task_specs(["journey_facts_mc"], cache_dir=work / "cache", work_dir=work)


def _evaluate(model, model_args, tasks, **kwargs) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager
    for name in ("lm_eval", "lm-eval", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks,
                                   task_manager=TaskManager(include_defaults=False), random_seed=0,
                                   numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0, **kwargs)


def test_local_completions_matches_the_hf_backend_on_a_multiple_choice_task(stack, artifact_dir, facts_task):
    base, _, _ = stack
    api = _evaluate("local-completions", {
        "model": "t/sft", "base_url": f"{base}/v1/completions", "tokenizer": str(artifact_dir),
        "tokenizer_backend": "huggingface", "num_concurrent": 1, "max_retries": 1, "max_length": 256},
        facts_task, limit=LIMIT)
    hf = _evaluate("hf", {"pretrained": str(artifact_dir), "device": "cpu", "batch_size": 8}, facts_task, limit=LIMIT)
    api_acc = api["results"]["journey_facts_mc"]["acc,none"]
    hf_acc = hf["results"]["journey_facts_mc"]["acc,none"]
    print(f"journey_facts_mc acc over {LIMIT} docs: local-completions {api_acc:.4f}, hf {hf_acc:.4f}")
    assert abs(api_acc - hf_acc) <= 0.01
    # Stronger than the accuracies: every choice's log-likelihood is the same number (fp32 rounding apart).
    def lls(result):
        return {s["doc_id"]: [r[0][0] for r in s["resps"]] for s in result["samples"]["journey_facts_mc"]}
    api_lls, hf_lls = lls(api), lls(hf)
    assert len(api_lls) == LIMIT and api_lls.keys() == hf_lls.keys()
    for doc in api_lls:
        assert api_lls[doc] == pytest.approx(hf_lls[doc], abs=1e-3)
    api_norm = api["results"]["journey_facts_mc"]["acc_norm,none"]
    assert abs(api_norm - hf["results"]["journey_facts_mc"]["acc_norm,none"]) <= 0.01


def test_local_chat_completions_runs_a_generation_task(stack, tmp_path):
    base, _, _ = stack
    data = tmp_path / "hello.jsonl"
    data.write_text("".join(json.dumps({"question": "Say hello", "answer": HELLO_ANSWER}) + "\n" for _ in range(3)))
    spec = tmp_path / "journey_hello_gen.yaml"
    spec.write_text(json.dumps({
        "task": "journey_hello_gen", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": [str(data)]}},
        "output_type": "generate_until", "test_split": "test", "doc_to_text": "{{question}}",
        "doc_to_target": "{{answer}}", "generation_kwargs": {"until": ["<|end|>"], "max_gen_toks": 40,
                                                             "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]}))
    result = _evaluate("local-chat-completions", {
        "model": "t/sft", "base_url": f"{base}/v1/chat/completions", "num_concurrent": 1, "max_retries": 1},
        [str(spec)], apply_chat_template=True)
    scores = result["results"]["journey_hello_gen"]
    assert scores["exact_match,none"] == 1.0  # the memorised reply, greedy


def test_completions_wire_format(stack, artifact_dir):
    from transformers import AutoTokenizer
    base, _, _ = stack
    tokenizer = AutoTokenizer.from_pretrained(artifact_dir)
    prompt = "<|user|>Say hello<|end|><|assistant|>"
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    with httpx.Client(base_url=base, timeout=120) as client:
        text = client.post("/v1/completions", json={"model": "journey", "prompt": prompt, "max_tokens": 40,
                                                    "temperature": 0}).json()
        assert text["object"] == "text_completion" and text["choices"][0]["text"] == HELLO_ANSWER
        assert text["choices"][0]["finish_reason"] == "stop"
        cut = client.post("/v1/completions", json={"model": "journey", "prompt": ids, "max_tokens": 40,
                                                   "temperature": 0, "stop": [" my"]}).json()
        assert cut["choices"][0]["text"] == "Hello there," and cut["choices"][0]["finish_reason"] == "stop"
        scored = client.post("/v1/completions", json={"model": "t/sft", "prompt": [ids, ids[:3]], "max_tokens": 0,
                                                      "echo": True, "logprobs": 2}).json()
        first, second = scored["choices"]
        assert [c["index"] for c in scored["choices"]] == [0, 1] and first["text"] == prompt
        assert first["logprobs"]["token_logprobs"][0] is None and len(first["logprobs"]["tokens"]) == len(ids)
        assert all(lp <= 0 for lp in first["logprobs"]["token_logprobs"][1:])
        assert second["logprobs"]["token_logprobs"][1:] == pytest.approx(first["logprobs"]["token_logprobs"][1:3])
        assert scored["usage"]["completion_tokens"] == 0
        for body, param in [({"n": 2}, "n"), ({"stream": True}, "stream"), ({"logprobs": 21}, "logprobs"),
                            ({"max_tokens": -1}, "max_tokens"), ({"prompt": []}, "prompt"),
                            ({"prompt": [[1, 2], "x"]}, "prompt"), ({"prompt": [10**9]}, "prompt"),
                            ({"suffix": "!"}, "suffix"), ({"model": "/etc"}, "model")]:
            answer = client.post("/v1/completions", json={"model": "journey", "prompt": "hi", **body})
            assert 400 <= answer.status_code < 500, (body, answer.text)
            assert answer.json()["error"]["param"] == param, (body, answer.json())
