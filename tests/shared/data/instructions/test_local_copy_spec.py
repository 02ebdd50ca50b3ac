"""``hf:<dataset>@<local copy>``: the config spelling of ``data_files=`` for the hub instruction datasets."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.data import DataError
from shared.data.instructions import load_preference_dataset, load_sft_dataset

DOLLY = "hf:databricks/databricks-dolly-15k"
HH = "hf:Anthropic/hh-rlhf"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def dolly(path: Path, n: int = 40) -> Path:
    return write_jsonl(path, [{"instruction": f"Name a number after {i}.", "context": "" if i % 2 else "Be brief.",
                               "response": str(i + 1), "category": "open_qa"} for i in range(n)])


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_the_at_form_reads_what_data_files_reads(tmp_path, split):
    path = dolly(tmp_path / "dolly" / "train.jsonl")
    via_at = load_sft_dataset(f"{DOLLY}@{path}", split)
    assert via_at == load_sft_dataset(DOLLY, split, data_files=[str(path)])
    assert via_at and all(e["id"].startswith("dolly/") and e["task"] == "dolly:open_qa" for e in via_at)


def test_the_at_form_takes_a_folder_and_preference_data(tmp_path):
    folder = tmp_path / "hh"
    write_jsonl(folder / "train.jsonl", [{"chosen": f"\n\nHuman: q{i}?\n\nAssistant: yes {i}",
                                          "rejected": f"\n\nHuman: q{i}?\n\nAssistant: no"} for i in range(30)])
    pairs = load_preference_dataset(f"{HH}@{folder}", "train")
    assert pairs and all(p["prompt"][0]["content"].startswith("q") and p["margin"] == 1.0 for p in pairs)


@pytest.mark.parametrize("spec, data_files, match", [
    (f"{DOLLY}@/nonexistent/dolly.jsonl", None, "the local copy /nonexistent/dolly.jsonl does not exist"),
    (f"{DOLLY}@", None, r"write hf:<dataset>@<local file or folder>"),
    ("hf:@x.jsonl", None, r"write hf:<dataset>@<local file or folder>"),
    (f"{DOLLY}@{{path}}", ["{path}"], "data_files= is given too"),
    ("hf:Anthropic/hh-rlhf@{path}", None, "is a preference dataset, not sft data"),
])
def test_bad_at_specs_name_the_fix(tmp_path, spec, data_files, match):
    path = dolly(tmp_path / "dolly.jsonl")
    spec = spec.replace("{path}", str(path))
    files = [f.replace("{path}", str(path)) for f in data_files] if data_files else None
    with pytest.raises(DataError, match=match):
        load_sft_dataset(spec, data_files=files)
