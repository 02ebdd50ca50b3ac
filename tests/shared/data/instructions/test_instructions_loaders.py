"""Loaders on local files with the real hub schemas (dolly, oasst1, SlimOrca, hh-rlhf, ultrafeedback)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared.data import DataError
from shared.data.instructions import (check_nonempty, from_arrow_row, generate_instructions, load_preference_dataset,
                                      load_sft_dataset, split_name)
from shared.chat_format import render_chat

DOLLY = "hf:databricks/databricks-dolly-15k"
HH = "hf:Anthropic/hh-rlhf"
ULTRA = "hf:HuggingFaceH4/ultrafeedback_binarized"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def both_splits(load, source: str, **kw) -> tuple[list[dict], list[dict]]:
    train, heldout = load(source, "train", **kw), _maybe(load, source, "heldout", **kw)
    assert all(split_name(r["id"]) == "train" for r in train)
    assert all(split_name(r["id"]) == "heldout" for r in heldout)
    return train, heldout


def _maybe(load, source, split, **kw) -> list[dict]:
    try:
        return load(source, split, **kw)
    except DataError as exc:  # a tiny fixture may hash nothing to one side
        assert "no " in str(exc)
        return []


def dolly_rows(n: int) -> list[dict]:
    rows = [{"instruction": f"Question {i}?", "context": "Some context." if i % 2 else "",
             "response": f"Answer {i}.", "category": "open_qa" if i % 2 else "closed_qa"} for i in range(n)]
    rows.append({"instruction": "", "context": "", "response": "orphan", "category": "open_qa"})
    return rows


def test_dolly_instruction_and_context_form_the_user_turn(tmp_path, caplog):
    path = write_jsonl(tmp_path / "dolly.jsonl", dolly_rows(30))
    with caplog.at_level(logging.WARNING):
        train, heldout = both_splits(load_sft_dataset, DOLLY, data_files=[str(path)])
    rows = sorted(train + heldout, key=lambda r: int(r["id"].split("/")[1]))
    assert [r["id"] for r in rows] == [f"dolly/{i}" for i in range(30)], "the empty row is skipped"
    assert "skipped 1 rows" in caplog.text
    first, second = rows[0], rows[1]
    assert first["messages"] == [{"role": "user", "content": "Question 0?"},
                                 {"role": "assistant", "content": "Answer 0."}]
    assert second["messages"][0]["content"] == "Question 1?\n\nSome context."
    assert second["task"] == "dolly:open_qa" and second["check"] == {"kind": "none", "answer": "Answer 1."}
    assert len(load_sft_dataset(DOLLY, "train", max_examples=3, data_files=[str(path)])) == 3


def test_oasst1_follows_the_best_ranked_replies(tmp_path):
    def msg(mid, parent, role, text, rank=None, lang="en"):
        return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "lang": lang, "rank": rank,
                "deleted": False, "message_tree_id": "t"}

    rows = [
        msg("a3", "p2", "assistant", "It is 4.", 0),            # a reply before its parent in the file
        msg("p1", None, "prompter", "Hi, can you add?"),
        msg("a1", "p1", "assistant", "No.", 1),
        msg("a2", "p1", "assistant", "Yes, I can.", 0),
        msg("p2", "a2", "prompter", "What is 2 + 2?"),
        msg("p3", "a1", "prompter", "Why not?"),
        msg("d1", None, "prompter", "Hallo", lang="de"),
        msg("d2", "d1", "assistant", "Hallo!", 0, lang="de"),
        msg("q1", None, "prompter", "Nobody answers me."),
    ]
    path = write_parquet(tmp_path / "oasst.parquet", rows)
    train, heldout = both_splits(load_sft_dataset, "hf:OpenAssistant/oasst1", data_files=str(path))
    assert len(train + heldout) == 1
    (example,) = train + heldout
    assert example["id"] == "oasst1/p1"
    assert [m["content"] for m in example["messages"]] == ["Hi, can you add?", "Yes, I can.", "What is 2 + 2?",
                                                            "It is 4."]
    assert [m["role"] for m in example["messages"]] == ["user", "assistant", "user", "assistant"]


def test_slimorca_maps_speakers_and_drops_an_unanswered_last_turn(tmp_path):
    rows = [{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": f"Hi {i}"},
                               {"from": "gpt", "value": f"Hello {i}"}, {"from": "human", "value": "Bye"}]}
            for i in range(12)]
    path = write_jsonl(tmp_path / "slimorca.jsonl", rows)
    train, heldout = both_splits(load_sft_dataset, "hf:Open-Orca/SlimOrca", data_files=[str(path)])
    assert len(train + heldout) == 12
    example = next(r for r in train + heldout if r["id"] == "slimorca/0")
    assert example["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 0"},
                                   {"role": "assistant", "content": "Hello 0"}]


def hh_row(i: int, same: bool = False) -> dict:
    prefix = f"\n\nHuman: Hi {i}\n\nAssistant: Hello!\n\nHuman: What is {i} + 1?\n\nAssistant:"
    return {"chosen": f"{prefix} {i + 1}", "rejected": f"{prefix} {i + 1 if same else i + 2}"}


def test_hh_rlhf_shared_turns_are_the_prompt(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [hh_row(i) for i in range(20)])
    train, heldout = both_splits(load_preference_dataset, HH, data_files=[str(path)])
    assert len(train + heldout) == 20
    pair = next(p for p in train + heldout if p["id"] == "hh-rlhf/3")
    assert pair["prompt"] == [{"role": "user", "content": "Hi 3"}, {"role": "assistant", "content": "Hello!"},
                              {"role": "user", "content": "What is 3 + 1?"}]
    assert pair["chosen"] == [{"role": "assistant", "content": "4"}]
    assert pair["rejected"] == [{"role": "assistant", "content": "5"}]
    assert pair["margin"] == 1.0
    assert render_chat(pair["prompt"] + pair["chosen"]).endswith("<|assistant|>4<|end|>")


def test_ultrafeedback_margin_is_the_score_difference(tmp_path):
    rows = [{"prompt": f"Q{i}?", "prompt_id": f"pid{i}",
             "chosen": [{"content": f"Q{i}?", "role": "user"}, {"content": "Good.", "role": "assistant"}],
             "rejected": [{"content": f"Q{i}?", "role": "user"}, {"content": "Bad.", "role": "assistant"}],
             "messages": [{"content": f"Q{i}?", "role": "user"}, {"content": "Good.", "role": "assistant"}],
             "score_chosen": 8.0, "score_rejected": 5.5} for i in range(15)]
    path = write_parquet(tmp_path / "uf.parquet", rows)
    train, heldout = both_splits(load_preference_dataset, ULTRA, data_files=[str(path)])
    assert sorted(p["id"] for p in train + heldout) == sorted(f"pid{i}" for i in range(15))
    pair = train[0]
    assert pair["prompt"] == [{"role": "user", "content": f"Q{pair['id'][3:]}?"}]
    assert pair["chosen"][0]["content"] == "Good." and pair["rejected"][0]["content"] == "Bad."
    assert pair["margin"] == pytest.approx(2.5)


def test_a_file_without_a_dataset_field_names_field_dataset_and_columns(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "response"} for r in dolly_rows(3)]
    path = write_jsonl(tmp_path / "dolly.jsonl", rows)
    with pytest.raises(DataError, match=r"no field 'response' \(it has \['category', 'context', 'instruction'\]\)"
                                        r".*databricks/databricks-dolly-15k"):
        load_sft_dataset(DOLLY, data_files=[str(path)])


def test_no_usable_pairs_is_a_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [hh_row(i, same=True) for i in range(5)])
    with pytest.raises(DataError, match=r"no preference pairs in hf:Anthropic/hh-rlhf.*the fix"):
        load_preference_dataset(HH, data_files=[str(path)])
    with pytest.raises(DataError, match=r"no preference pairs in sampled pairs; the fix: "):
        check_nonempty([], "sampled pairs")
    check_nonempty([{"id": "x"}], "sampled pairs")


def test_our_own_jsonl_round_trips_and_is_validated(tmp_path):
    examples = generate_instructions(140, seed=2)
    path = write_jsonl(tmp_path / "sft.jsonl", examples)
    train, heldout = both_splits(load_sft_dataset, str(path))
    assert sorted(train + heldout, key=lambda e: e["id"]) == sorted(examples, key=lambda e: e["id"])
    assert load_sft_dataset(f"file:{path}", "train") == train
    pairs = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"{i} + 1?"}],
              "chosen": [{"role": "assistant", "content": str(i + 1)}],
              "rejected": [{"role": "assistant", "content": str(i)}], "margin": 1.0} for i in range(20)]
    pref_path = write_jsonl(tmp_path / "prefs.jsonl", pairs)
    got_train, got_heldout = both_splits(load_preference_dataset, str(pref_path))
    assert len(got_train + got_heldout) == 20
    no_check = {k: v for k, v in examples[1].items() if k != "check"}
    broken = write_jsonl(tmp_path / "broken.jsonl", [examples[0], no_check])
    with pytest.raises(DataError, match=r"broken.jsonl:2 has no field 'check'.*an SFT example needs"):
        load_sft_dataset(str(broken), "train" if split_name(examples[1]["id"]) == "train" else "heldout")
    (tmp_path / "bad.jsonl").write_text('{"id": 1\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1 is not valid JSON"):
        load_sft_dataset(str(tmp_path / "bad.jsonl"))


def test_builtin_source_and_arrow_round_trip():
    train = load_sft_dataset("builtin:instructions", max_examples=50)
    assert len(train) == 50 and all(split_name(e["id"]) == "train" for e in train)
    datasets = pytest.importorskip("datasets")
    back = [from_arrow_row(r) for r in datasets.Dataset.from_list(generate_instructions(140))]
    assert [render_chat(r["messages"]) for r in back] == [render_chat(e["messages"])
                                                          for e in generate_instructions(140)]


@pytest.mark.parametrize("call, match", [
    (lambda: load_sft_dataset("hf:foo/bar"), r"no converter for dataset 'foo/bar'.*hf:OpenAssistant/oasst1"),
    (lambda: load_sft_dataset(HH), r"is a preference dataset.*load_preference_dataset"),
    (lambda: load_preference_dataset("builtin:instructions"), "has no preference pairs"),
    (lambda: load_sft_dataset("nope:x"), r"unknown sft source 'nope:x'"),
    (lambda: load_sft_dataset("builtin:instructions", "validation"), r"unknown split 'validation'"),
    (lambda: load_sft_dataset("builtin:instructions", max_examples=0), "max_examples must be >= 1"),
    (lambda: load_sft_dataset("builtin:instructions", data_files=["x.jsonl"]), "only applies to hf:"),
    (lambda: load_sft_dataset("missing.jsonl"), "does not exist"),
])
def test_bad_sources_name_the_fix(call, match):
    with pytest.raises(DataError, match=match):
        call()
