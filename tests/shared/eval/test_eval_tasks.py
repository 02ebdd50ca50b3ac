"""The evaluation suite: each task on a tiny model, and on scripted stand-ins against hand-computed numbers."""
from __future__ import annotations

import json

import pytest

from shared.data.instructions.schema import target_response
from shared.eval.checkpoint import EvalError
from shared.eval.tasks import TASKS, run_suite, run_tasks
from shared.eval.tasks.base import EvalContext, heldout_examples, heldout_safety_prompts, prompt_of
from shared.eval.tasks.chat_format import has_stray_role
from shared.eval.tasks.rag import REASON
from shared.eval.tasks.safety import heldout_hard_safety_prompts
from shared.eval.tasks.tool_use import MAX_TOOL_ROUNDS, TOOLS_OFF, expected_tool
from shared.chat_format import render_chat
from shared.tools.docs_search import NO_MATCH, search_docs
from shared.tools.executor import execute

REFUSE = "I can't help with that.<|end|>"


def scripted(reply):
    """A context whose "model" is ``reply(conversation, index_in_batch) -> str``; it logs every prompt asked."""
    asked = []

    def reply_fn(conversations):
        asked.extend(conversations)
        return [reply(c, i) for i, c in enumerate(conversations)]
    ctx = EvalContext("scripted", limit=None, reply_fn=reply_fn)
    return ctx, asked


def key(conversation):
    return render_chat(conversation, add_generation_prompt=True)


@pytest.fixture(scope="module")
def oracle():
    """Replies with each held-out example's own target: every check must pass."""
    examples = list(heldout_examples()) + [e for prompts in (heldout_safety_prompts(), heldout_hard_safety_prompts())
                                           for side in prompts.values() for e in side]
    targets = {key(prompt_of(e)): target_response(e) for e in examples}
    return lambda conversation, _: targets[key(conversation)]


def tool_examples():
    return [e for e in heldout_examples() if e["task"] == "tool"]


# ---------------------------------------------------------------- the suite API


def test_every_task_states_how_it_scores():
    assert set(TASKS) == {"instructions", "chat_format", "tool_use", "safety", "rag"}
    for name, task in TASKS.items():
        assert task.name == name and task.description.endswith(".") and task.metrics


def test_unknown_task_and_non_model_paths_are_clear_errors(tmp_path):
    with pytest.raises(EvalError, match=r"unknown evaluation task\(s\) \['nope'\].*chat_format"):
        run_suite(tmp_path, ["instructions", "nope"])
    with pytest.raises(EvalError, match="not a causal language model"):
        run_suite(tmp_path, ["instructions"])
    with pytest.raises(EvalError, match="positive limit"):
        EvalContext(tmp_path, limit=0)


def test_rag_is_skipped_with_its_reason_and_never_scored(tmp_path):
    ctx, asked = scripted(lambda c, i: "x<|end|>")
    result = run_tasks(ctx, ["rag"], out_dir=tmp_path)
    assert result == {"skipped": {"rag": REASON}} and not asked
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["skipped"] == {"rag": REASON}
    with pytest.raises(EvalError, match="retriever"):
        TASKS["rag"].run(ctx)


# ---------------------------------------------------------------- scripted stand-ins


def test_oracle_scores_perfectly_and_prompts_are_generated_once(oracle):
    ctx, asked = scripted(oracle)
    ctx.limit = 60
    m = run_tasks(ctx, ["instructions", "chat_format", "safety"])
    assert m["instructions/exact_match"] == 1.0
    assert all(v == 1.0 for k, v in m.items() if k.startswith("instructions/acc_"))
    assert (m["chat_format/format_ok"], m["chat_format/terminated"], m["chat_format/stray_role"]) == (1.0, 1.0, 0.0)
    assert (m["safety/refusal_rate_harmful"], m["safety/answer_rate_helpful"]) == (1.0, 1.0)
    assert (m["safety/refusal_rate_harmful_hard"], m["safety/answer_rate_helpful_hard"]) == (1.0, 1.0)
    assert m["safety/n_harmful_hard"] == m["safety/n_helpful_hard"] == 50  # limit 60 > the 50 per side
    assert m["chat_format/n"] == 60 and m["instructions/n"] < 60  # docs and refusals are not exact-checkable
    pool = {key(prompt_of(e)) for e in heldout_examples()[:60]}
    assert len(asked) == len({key(c) for c in asked})  # nothing generated twice
    assert pool <= {key(c) for c in asked}


def test_chat_format_counts_by_hand():
    replies = ["4<|end|>", "4", "4<|user|>hi<|end|>", "<|end|>"]
    ctx, _ = scripted(lambda c, i: replies[i])
    ctx.limit = 4
    m = TASKS["chat_format"].run(ctx)
    assert m == {"n": 4.0, "format_ok": 0.25, "terminated": 0.5, "stray_role": 0.25}
    assert [r["reply"] for r in ctx.rows["chat_format"]] == replies
    assert has_stray_role("a<|assistant|>") and not has_stray_role("a<|end|><|user|>")


def test_safety_counts_by_hand():
    prompts = {**heldout_safety_prompts(), **heldout_hard_safety_prompts()}
    # refuses the first harmful prompt only, and wrongly refuses the first helpful one too; on the hard
    # set, the first three harmful ones and the first two helpful ones
    refused = {key(prompt_of(prompts[side][i])) for side, n in (("harmful", 1), ("helpful", 1), ("harmful_hard", 3),
                                                                 ("helpful_hard", 2)) for i in range(n)}
    ctx, asked = scripted(lambda c, i: REFUSE if key(c) in refused else "Sure.<|end|>")
    ctx.limit = 4
    m = TASKS["safety"].run(ctx)
    assert m == {"n_harmful": 4.0, "n_helpful": 4.0, "refusal_rate_harmful": 0.25, "answer_rate_helpful": 0.75,
                 "n_harmful_hard": 4.0, "n_helpful_hard": 4.0, "refusal_rate_harmful_hard": 0.75,
                 "answer_rate_helpful_hard": 0.5}
    assert set(m) == set(TASKS["safety"].metrics) and len(asked) == 16
    sides = [r["side"] for r in ctx.rows["safety"]]
    assert sides == ["harmful"] * 4 + ["helpful"] * 4 + ["harmful_hard"] * 4 + ["helpful_hard"] * 4


def tool_model(conversation, _):
    """Calls the expected tool with the expected arguments, then answers with the tool's result."""
    last = conversation[-1]
    if last["role"] == "tool":
        return last["content"] + "<|end|>"
    example = next(e for e in tool_examples() if e["messages"][0] == last)
    return "<|tool_call|>" + json.dumps(example["messages"][1]["tool_call"], separators=(",", ":")) + "<|end|>"


def test_tool_use_calls_runs_and_answers():
    ctx, _ = scripted(tool_model)
    ctx.limit = 40
    m = TASKS["tool_use"].run(ctx)
    n_full = sum(e["check"]["kind"] == "exact" for e in tool_examples()[:40])
    # without tools it echoes the error it gets instead of a result: never a right answer
    assert m == {"n": 40.0, "n_full": float(n_full), "valid_call": 1.0, "right_tool": 1.0, "success": 1.0,
                 "success_without_tools": 0.0}
    full = [r for r in ctx.rows["tool_use"] if r["success"] is not None]
    assert all(len(r["turns"]) == 2 and "tool_result" in r["turns"][0] for r in full)
    assert all(r["without_tools"]["turns"][0]["tool_result"] == TOOLS_OFF for r in full)


def test_tool_use_without_tools_scores_the_bare_models_own_answer():
    """A model that calls the tool but, refused it, answers right from its own head: half the time."""
    answers = {e["messages"][0]["content"]: e["check"]["answer"] for e in tool_examples()}
    knows = {q for k, q in enumerate(sorted(answers)) if k % 2 == 0}

    def model(conversation, _):
        question = conversation[0]["content"]
        if conversation[-1]["role"] == "tool" and conversation[-1]["content"] == TOOLS_OFF:
            return (answers[question] if question in knows else "I cannot tell") + "<|end|>"
        return tool_model(conversation, _)

    ctx, _ = scripted(model)
    ctx.limit = 40
    m = TASKS["tool_use"].run(ctx)
    full = [e for e in tool_examples()[:40] if e["check"]["kind"] == "exact"]
    assert m["success"] == 1.0
    assert m["success_without_tools"] == sum(e["messages"][0]["content"] in knows for e in full) / len(full)
    assert 0.0 < m["success_without_tools"] < 1.0


def test_executor_reproduces_every_heldout_tool_result():
    """The offline tools give exactly the results the builtin tool examples were written with."""
    for example in tool_examples():
        if example["check"]["kind"] == "exact":
            assert execute(example["messages"][1]["tool_call"]) == example["messages"][2]["content"]


def test_docs_search_falls_back_to_word_overlap():
    assert search_docs("the json module") == search_docs("json") == execute(
        {"name": "search_docs", "arguments": {"query": "JSON"}})
    assert "URL" in search_docs("parse URLs")
    assert search_docs("qqqzzz") == NO_MATCH.format(query="qqqzzz")


@pytest.mark.parametrize("reply, valid, right, success", [
    ('<|tool_call|>{"name":"calculator","arguments":{"expression":"2+<|end|>', 0.0, 0.0, 0.0),  # broken JSON
    ('<|tool_call|>{"name":"calculator","arguments":{"expression":"2+2"}}', 0.0, None, 0.0),  # never terminated
    ('<|tool_call|>{"name":"calculator","arguments":{"query":"json"}}<|end|>', 0.0, None, 0.0),  # wrong arguments
    ('<|tool_call|>{"name":"calculator","arguments":{"expression":"1/0"}}<|end|>', 1.0, None, 0.0),  # tool fails
    ("42<|end|>", 0.0, 0.0, 0.0),  # answers without calling anything
])
def test_tool_use_failures_by_hand(reply, valid, right, success):
    ctx, _ = scripted(lambda c, i: reply if c[-1]["role"] == "user" else "nothing<|end|>")
    ctx.limit = 20
    m = TASKS["tool_use"].run(ctx)
    share_calculator = sum(expected_tool(e) == "calculator" for e in tool_examples()[:20]) / 20
    assert m["valid_call"] == valid and m["success"] == success
    assert m["right_tool"] == (share_calculator if right is None else right)


def test_tool_rounds_are_capped():
    call = '<|tool_call|>{"name":"calculator","arguments":{"expression":"1+1"}}<|end|>'
    ctx, _ = scripted(lambda c, i: call)
    ctx.limit = 20
    m = TASKS["tool_use"].run(ctx)
    assert m["valid_call"] == 1.0 and m["success"] == 0.0
    full = [r for r in ctx.rows["tool_use"] if r["success"] is not None]
    assert full and all(len(r["turns"]) == MAX_TOOL_ROUNDS + 1 for r in full)


# ---------------------------------------------------------------- a real (tiny) model


def test_run_suite_on_a_tiny_model(tiny_checkpoint, tmp_path):
    m = run_suite(tiny_checkpoint, limit=3, max_new_tokens=8, batch_size=4, out_dir=tmp_path)
    assert m.pop("skipped") == {"rag": REASON}
    for name, value in m.items():
        task, metric = name.split("/")
        assert metric in TASKS[task].metrics and isinstance(value, float)
        assert metric.startswith("n") or 0.0 <= value <= 1.0
    assert (m["chat_format/n"], m["tool_use/n"], m["safety/n_harmful"], m["safety/n_helpful"]) == (3, 3, 3, 3)
    for task in ("instructions", "chat_format", "tool_use", "safety"):
        rows = json.loads((tmp_path / f"{task}.json").read_text())["rows"]
        assert rows and all("id" in r for r in rows)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["settings"]["limit"] == 3 and saved["metrics"]["chat_format/n"] == 3
