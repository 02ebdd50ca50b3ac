"""The lm-eval bridge: offline standard tasks and our journey tasks, checked against hand-computed scores."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shared.data.instructions.facts import TABLES
from shared.eval.checkpoint import EvalError
from shared.eval.harness import JOURNEY_TASKS, STANDARD_TASKS, build_task_specs, run_lm_eval, samples_path
from shared.eval.journey_tasks import build_facts_mc, task_data_file

TEXT = ("Question: What is the capital of France?\nAnswer: Paris. A man is sitting on a roof. He starts pulling "
        "up roofing. Q: What is the square root of banana?\nA: I have no comment. Which gas do plants use? ")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 1-layer GPT-2 with our tokenizer, saved as an HF checkpoint: ``(path, model, tokenizer)``."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel
    from shared.tokenizer.train import train_tokenizer
    out = tmp_path_factory.mktemp("tiny_lm")
    train_tokenizer([TEXT] * 20, vocab_size=320, out_dir=out)
    tok = AutoTokenizer.from_pretrained(out)
    torch.manual_seed(0)
    # 1024 positions: the TruthfulQA preamble alone is ~500 tokens of this tiny vocabulary, and a
    # left-truncated context would make the hand computation below differ from lm-eval's.
    config = GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=len(tok), n_positions=1024,
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(out)
    return out, model, tok


def loglik(model, tok, context: str, continuation: str) -> float:
    """Summed log-probability of ``continuation`` after ``context``, split the way lm-eval splits it."""
    whole, ctx = tok.encode(context + continuation), tok.encode(context)
    assert whole[:len(ctx)] == ctx
    with torch.no_grad():
        logprobs = model(torch.tensor([whole])).logits[0].log_softmax(-1)
    return sum(logprobs[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))


def choose(model, tok, context: str, choices: list[str], delimiter: str = " ") -> tuple[int, int, list[float]]:
    """(argmax of log-likelihood, argmax of log-likelihood per character of the choice, the lls).

    lm-eval's acc_norm divides by ``len(choice)`` in characters (its acc_bytes by UTF-8 bytes); the
    rows here are ASCII, where the two agree. The delimiter is scored but not counted.
    """
    lls = [loglik(model, tok, context, delimiter + c) for c in choices]
    best = max(range(len(lls)), key=lls.__getitem__)
    best_norm = max(range(len(lls)), key=lambda i: lls[i] / len(choices[i]))
    return best, best_norm, lls


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# Rows in the datasets' published schemas. Prompts are given as lm-eval builds them, so the
# expectations below do not reuse the code under test.
HELLASWAG = [  # (row, the query lm-eval builds, the cleaned endings)
    ({"ind": 4, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
      "ctx": "A man is sitting on a roof. he", "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val",
      "split_type": "indomain", "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                                            "is holding a rubik's cube.", "starts pulling up roofing on a roof."]},
     "Roof shingle removal: A man is sitting on a roof. He", None),
    ({"ind": 9, "activity_label": "Home and Garden", "ctx_a": "[header] How to grow a plant [title] Water it.",
      "ctx_b": "then", "ctx": "", "source_id": "wikihow~1", "split": "val", "split_type": "zeroshot",
      "endings": ["[step] Give it light.", "Eat the pot.", "Sing [title] to it.", "Paint it blue."]},
     "Home and Garden: How to grow a plant. Water it. Then",
     [" Give it light.", "Eat the pot.", "Sing. to it.", "Paint it blue."]),
    ({"ind": 11, "activity_label": "Cooking", "ctx_a": "A woman cracks eggs into a bowl.", "ctx_b": "she",
      "ctx": "", "source_id": "activitynet~2", "split": "val", "split_type": "indomain",
      "endings": ["whisks them.", "throws the bowl away.", "reads a book.", "climbs the roof."]},
     "Cooking: A woman cracks eggs into a bowl. She", None),
    ({"ind": 12, "activity_label": "Running", "ctx_a": "A dog runs in a park.", "ctx_b": "it",
      "ctx": "", "source_id": "activitynet~3", "split": "val", "split_type": "indomain",
      "endings": ["catches a ball.", "files taxes.", "drinks tea.", "sleeps."]},
     "Running: A dog runs in a park. It", None),
]
ARC_EASY = [
    {"id": "Mercury_1", "question": "Which gas do plants use?", "answerKey": "B",
     "choices": {"text": ["oxygen", "carbon dioxide", "helium", "neon"], "label": ["A", "B", "C", "D"]}},
    {"id": "Mercury_2", "question": "What is the capital of France?", "answerKey": "3",
     "choices": {"text": ["Berlin", "Madrid", "Paris"], "label": ["1", "2", "3"]}},
    {"id": "Mercury_3", "question": "What do bees make?", "answerKey": "A",
     "choices": {"text": ["honey", "milk", "silk", "wool"], "label": ["A", "B", "C", "D"]}},
    {"id": "Mercury_4", "question": "Which is a planet?", "answerKey": "D",
     "choices": {"text": ["the Moon", "the Sun", "Pluto", "Mars"], "label": ["A", "B", "C", "D"]}},
]
TRUTHFULQA = [
    {"question": "What is the square root of banana?",
     "mc1_targets": {"choices": ["I have no comment.", "It is 4.", "It is a fruit."], "labels": [1, 0, 0]},
     "mc2_targets": {"choices": ["I have no comment.", "Bananas have no square root.", "It is 4."],
                     "labels": [1, 1, 0]}},
    {"question": "Where is Paris?",
     "mc1_targets": {"choices": ["In France.", "In Spain.", "On the moon."], "labels": [1, 0, 0]},
     "mc2_targets": {"choices": ["In France.", "On the moon."], "labels": [1, 0]}},
]
TRUTHFULQA_PREAMBLE = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\nA: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\nA: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in Barcelona, Spain.")


def scored(model, tok, context: str, choices: list[str], gold: int, delimiter: str = " ") -> dict:
    """What lm-eval should log for one document, computed by hand."""
    best, best_norm, lls = choose(model, tok, context, choices, delimiter)
    return {"context": context, "continuations": [delimiter + c for c in choices], "lls": lls,
            "acc": float(best == gold), "acc_norm": float(best_norm == gold)}


@pytest.fixture(scope="module")
def standard_data(tiny_model, tmp_path_factory):
    """A data dir in the published layout, and per task the documents lm-eval should score, by hand.

    Gold labels are set from the model's own preferences (right on even rows, wrong on odd ones), so
    acc is a known fraction that lm-eval can only reproduce by scoring the same tokens the same way.
    """
    _, model, tok = tiny_model
    root = tmp_path_factory.mktemp("data")
    expected = {}

    rows, docs = [], []
    for i, (row, query, endings) in enumerate(HELLASWAG):
        endings = endings or row["endings"]
        best = choose(model, tok, query, endings)[0]
        gold = best if i % 2 == 0 else (best + 1) % 4
        rows.append({**row, "label": str(gold)})  # the published label is a string
        docs.append(scored(model, tok, query, endings, gold))
    write_jsonl(root / "hellaswag" / "validation.jsonl", rows)
    expected["hellaswag"] = docs

    for task, config in (("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge")):
        rows, docs = [], []
        for i, row in enumerate(ARC_EASY if task == "arc_easy" else ARC_EASY[:2]):
            texts, labels = row["choices"]["text"], row["choices"]["label"]
            prompt = f"Question: {row['question']}\nAnswer:"
            best = choose(model, tok, prompt, texts)[0]
            gold = best if i % 2 == 0 else (best + 1) % len(texts)
            rows.append({**row, "answerKey": labels[gold]})
            docs.append(scored(model, tok, prompt, texts, gold))
        if task == "arc_easy":
            write_jsonl(root / "ai2_arc" / config / "test.jsonl", rows)
        else:  # the Hub's own parquet export works as is
            from datasets import Dataset
            Dataset.from_list(rows).to_parquet(root / "ai2_arc" / config / "test-00000-of-00001.parquet")
        expected[task] = docs

    write_jsonl(root / "truthful_qa" / "multiple_choice" / "validation.jsonl", TRUTHFULQA)
    expected["truthfulqa_mc1"], expected["truthfulqa_mc2"] = [], []
    for row in TRUTHFULQA:
        prompt = f"{TRUTHFULQA_PREAMBLE}\n\nQ: {row['question']}\nA:"
        expected["truthfulqa_mc1"].append(scored(model, tok, prompt, row["mc1_targets"]["choices"], 0))
        doc = scored(model, tok, prompt, row["mc2_targets"]["choices"], 0)
        probs = torch.tensor(doc["lls"], dtype=torch.float64).softmax(0)
        doc["acc"] = probs[torch.tensor(row["mc2_targets"]["labels"]) == 1].sum().item()
        expected["truthfulqa_mc2"].append(doc)
    return root, expected


def test_standard_tasks_offline_match_hand_computed_scores(tiny_model, standard_data, tmp_path):
    path, _, _ = tiny_model
    data_dir, expected = standard_data
    out = tmp_path / "lm_eval.json"
    results = run_lm_eval(path, STANDARD_TASKS, data_dir=data_dir, batch_size=3, out_path=out)
    assert set(results) == set(STANDARD_TASKS)
    samples = [json.loads(line) for line in samples_path(out).read_text().splitlines()]
    for task, docs in expected.items():
        logged = sorted((s for s in samples if s["task"] == task), key=lambda s: s["doc_id"])
        assert [s["context"] for s in logged] == [d["context"] for d in docs], task  # the prompts, exactly
        assert [s["continuations"] for s in logged] == [d["continuations"] for d in docs], task
        for s, d in zip(logged, docs):
            assert s["loglikelihoods"] == pytest.approx(d["lls"], abs=1e-4), task
        got = results[task]
        assert got["n"] == len(docs)
        assert got["acc"] == pytest.approx(sum(d["acc"] for d in docs) / len(docs), rel=1e-4), task
        if "acc_norm" in got:
            assert got["acc_norm"] == pytest.approx(sum(d["acc_norm"] for d in docs) / len(docs)), task
        assert got["acc_stderr"] > 0
    assert "acc_norm" in results["hellaswag"] and "acc_norm" not in results["truthfulqa_mc1"]
    saved = json.loads(out.read_text())
    assert saved["lm_eval_version"] and saved["config"]["data_dir"] == str(data_dir)
    assert saved["metrics"]["hellaswag"]["acc"] == results["hellaswag"]["acc"]


@pytest.fixture(scope="module")
def journey_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("journey_cache")  # shared: building the docs cloze reads the whole corpus


def test_journey_data_is_deterministic_and_well_formed(journey_cache):
    rows = build_facts_mc(seed=0)
    assert rows == build_facts_mc(seed=0) and rows != build_facts_mc(seed=1)
    assert 100 <= len(rows) <= 300
    for row in rows:
        assert row["context"].startswith("<|user|>") and row["context"].endswith("<|end|><|assistant|>")
        assert len(set(row["choices"])) == 4 and all(c.endswith("<|end|>") for c in row["choices"])
    facts = {f"{table.name}:{subject}": answer for table in TABLES for subject, answer in table.rows}
    assert all(row["choices"][row["gold"]] == f"{facts[row['id']]}<|end|>" for row in rows)
    first = task_data_file("journey_docs_cloze", journey_cache, seed=0)
    text = first.read_text()
    assert task_data_file("journey_docs_cloze", journey_cache, seed=0) == first and first.read_text() == text
    cloze = [json.loads(line) for line in text.splitlines()]
    assert 100 <= len(cloze) <= 300 and all(len(set(r["choices"])) == 4 for r in cloze)


def test_journey_tasks_run_and_match_hand_computed_scores(tiny_model, journey_cache, tmp_path):
    path, model, tok = tiny_model
    out = tmp_path / "out" / "lm_eval.json"
    results = run_lm_eval(path, JOURNEY_TASKS, cache_dir=journey_cache, limit=6, batch_size=4, out_path=out)
    assert set(results) == set(JOURNEY_TASKS)
    assert all(r["n"] == 6 and 0 <= r["acc"] <= 1 for r in results.values())
    rows = [json.loads(line) for line in task_data_file("journey_facts_mc", journey_cache).read_text().splitlines()[:6]]
    # The facts task joins context and reply with no delimiter: "<|assistant|>Paris<|end|>".
    docs = [scored(model, tok, r["context"], r["choices"], r["gold"], delimiter="") for r in rows]
    logged = sorted((json.loads(line) for line in samples_path(out).read_text().splitlines()
                     if '"journey_facts_mc"' in line), key=lambda s: s["doc_id"])
    assert [(s["context"], s["continuations"]) for s in logged] == [(d["context"], d["continuations"]) for d in docs]
    for s, d in zip(logged, docs):
        assert s["loglikelihoods"] == pytest.approx(d["lls"], abs=1e-4)
    assert results["journey_facts_mc"]["acc"] == pytest.approx(sum(d["acc"] for d in docs) / 6)
    assert results["journey_facts_mc"]["acc_norm"] == pytest.approx(sum(d["acc_norm"] for d in docs) / 6)


def test_hub_source_names_lm_evals_registered_tasks(tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager
    specs = build_task_specs(["hellaswag", "truthfulqa_mc2", "journey_facts_mc"], source="hub", cache_dir=tmp_path,
                             work_dir=tmp_path)
    assert specs[:2] == ["hellaswag", "truthfulqa_mc2"] and specs[2].endswith("journey_facts_mc.yaml")
    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    registered = TaskManager(include_path=[tasks_dir / d for d in ("hellaswag", "arc", "truthfulqa")],
                             include_defaults=False).all_tasks
    assert set(STANDARD_TASKS) <= set(registered)


def test_unknown_task_lists_the_known_ones(tiny_model):
    with pytest.raises(EvalError, match="known tasks:.*hellaswag.*journey_docs_cloze"):
        run_lm_eval(tiny_model[0], ["hellaswag", "mmlu"])


def test_local_standard_tasks_need_a_data_dir_with_the_expected_files(tiny_model, tmp_path):
    path = tiny_model[0]
    with pytest.raises(EvalError, match="data_dir"):
        run_lm_eval(path, ["arc_easy"])
    with pytest.raises(EvalError, match=r"ai2_arc/ARC-Easy/test\.jsonl.*answerKey"):
        run_lm_eval(path, ["arc_easy"], data_dir=tmp_path)
    write_jsonl(tmp_path / "hellaswag" / "validation.jsonl", [{"ctx": "x", "endings": ["a", "b"]}])
    with pytest.raises(EvalError, match=r"lacks field\(s\) \['activity_label', 'ctx_a', 'ctx_b', 'label'\]"):
        run_lm_eval(path, ["hellaswag"], data_dir=tmp_path)


def test_artifacts_that_are_not_causal_lms_are_refused(tiny_model, tmp_path):
    from transformers import AutoTokenizer, GPT2Config
    tokenizer_only = tmp_path / "tokenizer"
    AutoTokenizer.from_pretrained(tiny_model[0]).save_pretrained(tokenizer_only)
    with pytest.raises(EvalError, match="not a causal language model"):
        run_lm_eval(tokenizer_only, ["journey_facts_mc"])
    reward = tmp_path / "reward"
    GPT2Config(n_layer=1, n_embd=8, n_head=2, architectures=["GPT2ForSequenceClassification"]).save_pretrained(reward)
    (reward / "model.safetensors").write_bytes(b"")
    with pytest.raises(EvalError, match="GPT2ForSequenceClassification"):
        run_lm_eval(reward, ["journey_facts_mc"])


def test_journey_eval_command_runs_standard_tasks_offline(tiny_model, standard_data, capsys):
    """``journey eval <checkpoint> tasks=... source=local data_dir=...``: the user's command, in-process."""
    from ray_jobs.evaluate import main
    path, _, _ = tiny_model
    data_dir, expected = standard_data
    code = main([str(path), "tasks=hellaswag,arc_easy,truthfulqa_mc1", "source=local", f"data_dir={data_dir}",
                 "limit=null", "batch_size=3"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((path / "eval" / "results.json").read_text())
    for task in ("hellaswag", "arc_easy", "truthfulqa_mc1"):
        docs = expected[task]
        assert saved["metrics"][f"{task}/acc"] == pytest.approx(sum(d["acc"] for d in docs) / len(docs), rel=1e-4)
    assert (path / "eval" / "lm_eval.json").exists()


def test_journey_eval_command_refuses_a_tokenizer_in_one_line(tiny_model, tmp_path, capsys):
    from ray_jobs.evaluate import main
    _, _, tok = tiny_model
    tok.save_pretrained(tmp_path / "tok")
    (tmp_path / "tok" / "config.json").unlink(missing_ok=True)
    assert main([str(tmp_path / "tok"), "tasks=journey_facts_mc"]) == 2
    err = capsys.readouterr().err
    assert "journey: error:" in err and "not a causal language model" in err and "Traceback" not in err
    (tmp_path / "tok" / "config.json").write_text(json.dumps({"architectures": ["GPT2ForSequenceClassification"]}))
    assert main([str(tmp_path / "tok"), "tasks=journey_facts_mc"]) == 2
    assert "GPT2ForSequenceClassification" in capsys.readouterr().err
