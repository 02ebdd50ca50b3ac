"""The ``gpt2-124m`` presets actually run: every stage, two steps, the real 124M shape, the journey's code path.

``journey run preset=gpt2-124m`` is what a user with one H100 types. Here it runs through
``ray_jobs.journey.main`` with that preset and overrides that only shrink it (two optimizer steps,
small batches, a few eval items, CPU/fp32 unless CUDA is there) over small local files in the
published schemas of the hub datasets the presets read:

- FineWeb-Edu (``text``, ``id``, ``url``, ... as parquet) for pretraining and CPT's general eval set;
- codeparrot-clean (``content``, ``repo_name``, ``path``, ... as jsonl) for continued pretraining;
- databricks-dolly-15k (``instruction``, ``context``, ``response``, ``category``) for SFT and prefs,
  read through the preset's own converter as ``hf:databricks/databricks-dolly-15k@<local copy>``;
- Anthropic/hh-rlhf (``chosen``/``rejected`` transcripts), the human-labelled preference option,
  for the reward model;
- HellaSwag, ARC-Easy/Challenge and TruthfulQA (multiple_choice) rows for the lm-eval tasks
  (``source=local``, the layout in ``shared/eval/harness.py``).

The tokenizer is GPT-2's vocabulary from the GGUF vocab file (the preset's ``pretrained: gpt2``
offline) plus our chat tokens: 50,263 ids, so the model is the real 124M shape (12 x 768, 1024
context). The bring-your-own test imports a nanoGPT ``ckpt.pt`` with ``journey import`` and runs the
journey without pretraining, continuing from it (the README's command).

Both run on the GPU too when CUDA is there (the ``cuda`` parameter, marked ``gpu``). Each test
writes the wall time of every stage to ``<tmp>/stage_times.json`` and prints it (``pytest -s``).
"""
from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
import torch

from shared.config import CONFIGS_DIR, read_yaml
from shared.stages import BY_NAME, JOURNEY

REPO = Path(__file__).resolve().parents[2]
GPT2_VOCAB = REPO.parent / "shared" / "data" / "tokenizers" / "ggml-vocab-gpt-2.gguf"
PRESET, PRESET_8GPU = "gpt2-124m", "gpt2-124m-8gpu"
DOLLY, HH = "databricks/databricks-dolly-15k", "Anthropic/hh-rlhf"
# GPT-2's 50,257 ids plus <|user|>, <|assistant|>, <|system|>, <|tool_call|>, <|tool_result|>, <|end|>
# (its own <|endoftext|> is ours too).
VOCAB = 50257 + 6
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]  # conftest skips gpu tests without CUDA

# Keys that may differ between a stage's gpt2-124m and gpt2-124m-8gpu presets: how the same work is
# spread over the machine. Anything else differing would make the 8-GPU run a different experiment.
PLACEMENT_KEYS = {"num_workers", "cpus_per_worker", "threads", "embed_actors", "train.batch_size",
                  "train.grad_accum"}
TRAINING_STAGES = ("pretrain", "cpt", "sft", "dpo", "reward", "rl")


# ----------------------------------------------------------------------------- the presets themselves

def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k == "train":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("stage", JOURNEY)
def test_every_journey_stage_has_both_presets_and_the_8gpu_one_is_the_same_experiment(stage):
    """Both presets exist for every stage ``journey run`` can run, the first comment line is the command,
    and the 8-GPU variant differs only in placement, with the same sequences (or pairs) per optimizer step."""
    one = read_yaml(CONFIGS_DIR / BY_NAME[stage].presets / f"{PRESET}.yaml")
    eight = read_yaml(CONFIGS_DIR / BY_NAME[stage].presets / f"{PRESET_8GPU}.yaml")
    for name in (PRESET, PRESET_8GPU):
        first = (CONFIGS_DIR / BY_NAME[stage].presets / f"{name}.yaml").read_text().splitlines()[0]
        assert first.startswith("# journey ") and f"preset={name}" in first, (stage, name, first)
    a, b = _flat(one), _flat(eight)
    differing = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert differing <= PLACEMENT_KEYS, (stage, differing - PLACEMENT_KEYS)
    if stage in TRAINING_STAGES:
        assert one["use_gpu"] is True and one["num_workers"] == 1 and eight["num_workers"] == 8, stage

        def per_step(p):
            return p["num_workers"] * p["train"]["batch_size"] * p["train"].get("grad_accum", 1)
        assert per_step(one) == per_step(eight), (stage, per_step(one), per_step(eight))


def test_pretrain_preset_is_build_nanogpts_half_million_token_step_on_one_gpu():
    p = read_yaml(CONFIGS_DIR / "pretrain" / f"{PRESET}.yaml")
    assert p["model"] == {"preset": "gpt2-124m"}
    assert p["train"]["batch_size"] * p["train"]["grad_accum"] * 1024 == 2 ** 19  # 524,288 tokens
    assert (p["train"]["lr"], p["train"]["warmup"], p["train"]["max_steps"]) == (6e-4, 715, 19073)


@pytest.mark.parametrize("stage", ["tokenizer", "pretrain"])
def test_gpt2_1b_presets_are_one_experiment_on_1_and_8_gpus(stage):
    """gpt2-1b is written for tokenizer and pretrain: both presets exist, start with their command, and
    differ only in placement, with GPT-3 XL's 1M-token step (B x T x accumulation x workers)."""
    one, eight = (read_yaml(CONFIGS_DIR / stage / f"{name}.yaml") for name in ("gpt2-1b", "gpt2-1b-8gpu"))
    for name in ("gpt2-1b", "gpt2-1b-8gpu"):
        first = (CONFIGS_DIR / stage / f"{name}.yaml").read_text().splitlines()[0]
        assert first.startswith("# journey ") and f"preset={name}" in first, (stage, name, first)
    a, b = _flat(one), _flat(eight)
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} <= PLACEMENT_KEYS
    if stage == "pretrain":
        assert one["model"] == {"preset": "gpt2-1b"} and (one["num_workers"], eight["num_workers"]) == (1, 8)
        for p in (one, eight):
            assert p["num_workers"] * p["train"]["batch_size"] * p["train"]["grad_accum"] * 1024 == 2 ** 20


@pytest.mark.parametrize("name", ["gpt2-1b", "gpt2-1b-8gpu"])
def test_gpt2_1b_parallelism_is_the_planners_choice_for_its_gpus(name):
    """The preset's ``parallelism`` (and options) is what ``choose_strategy`` picks for its workers x 80 GB."""
    from shared.config import load_config
    from shared.model.presets import model_config
    from shared.plan.hardware import KNOWN_GPUS
    from shared.plan.memory import ModelShape, choose_strategy
    from shared.plan.plan import configured_strategy
    from shared.training.pretrain_config import PretrainConfig
    cfg = load_config(PretrainConfig, "pretrain", name)
    g = model_config(cfg.model.preset, vocab_size=VOCAB)
    shape = ModelShape(g.vocab_size, g.block_size, g.n_layer, g.n_head, g.n_embd)
    choice = choose_strategy(shape, cfg.num_workers, KNOWN_GPUS["H100"], cfg.train.batch_size, g.block_size, "bf16")
    assert configured_strategy(cfg) == choice.choice.strategy, choice.reason


# ----------------------------------------------------------------------------- local copies of the hub data

def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _fineweb(path: Path) -> Path:
    """FineWeb-Edu rows (sample-10BT's columns) holding the Python docs' prose, as one parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shared.data import iter_corpus
    docs = list(iter_corpus("builtin:python-docs", max_bytes=400_000))
    rows = [{"text": d.text, "id": f"<urn:uuid:{i:08d}-0000-0000-0000-000000000000>",
             "dump": "CC-MAIN-2024-10", "url": f"https://docs.python.org/3/{d.id}", "file_path": "s3://x.warc.gz",
             "language": "en", "language_score": 0.97, "token_count": len(d.text) // 4, "score": 3.1,
             "int_score": 3} for i, d in enumerate(docs)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _codeparrot(path: Path) -> Path:
    """codeparrot-clean rows (its columns; the code is in ``content``) holding stdlib source files."""
    from shared.data import iter_corpus
    rows = [{"repo_name": "python/cpython", "path": d.id, "copies": "1", "size": str(len(d.text)),
             "content": d.text, "license": "psf-2.0", "hash": i, "line_mean": 30.0, "line_max": 99,
             "alpha_frac": 0.6, "autogenerated": False}
            for i, d in enumerate(iter_corpus("builtin:python-code", max_bytes=300_000))]
    return _write_jsonl(path, rows)


def _dolly(path: Path, n: int = 80) -> Path:
    """databricks-dolly-15k rows: our builtin instructions' plain questions as instruction/response."""
    from shared.data.instructions import load_sft_dataset
    rows = []
    for ex in load_sft_dataset("builtin:instructions"):
        user, reply = ex["messages"][-2], ex["messages"][-1]
        if len(ex["messages"]) != 2 or reply.get("tool_call") or not reply.get("content"):
            continue
        context = "Answer briefly." if len(rows) % 3 == 0 else ""  # some rows have a context, as in Dolly
        rows.append({"instruction": user["content"], "context": context, "response": reply["content"],
                     "category": "closed_qa" if context else "open_qa"})
        if len(rows) == n:
            break
    return _write_jsonl(path, rows)


def _hh_rlhf(path: Path, n: int = 40) -> Path:
    """Anthropic/hh-rlhf rows: two transcripts sharing the human turn, differing in the last reply."""
    rows = [{"chosen": f"\n\nHuman: What is {i} plus {i}?\n\nAssistant: {i} plus {i} is {2 * i}.",
             "rejected": f"\n\nHuman: What is {i} plus {i}?\n\nAssistant: I do not know."} for i in range(n)]
    return _write_jsonl(path, rows)


def _lm_eval_data(root: Path) -> Path:
    """Two rows per standard lm-eval task, in the published schemas (shared/eval/harness.py's layout)."""
    hellaswag = [{"ind": i, "activity_label": "Cooking", "ctx_a": "A woman cracks eggs into a bowl.", "ctx_b": "she",
                  "ctx": "A woman cracks eggs into a bowl. she", "source_id": f"activitynet~{i}", "split": "val",
                  "split_type": "indomain", "label": str(i % 4),
                  "endings": ["whisks them.", "throws the bowl away.", "reads a book.", "climbs the roof."]}
                 for i in range(2)]
    arc = [{"id": f"Mercury_{i}", "question": q, "answerKey": key,
            "choices": {"text": choices, "label": ["A", "B", "C", "D"]}}
           for i, (q, choices, key) in enumerate([
               ("Which gas do plants use?", ["oxygen", "carbon dioxide", "helium", "neon"], "B"),
               ("What do bees make?", ["honey", "milk", "silk", "wool"], "A")])]
    truthfulqa = [{"question": "Where is Paris?",
                   "mc1_targets": {"choices": ["In France.", "In Spain."], "labels": [1, 0]},
                   "mc2_targets": {"choices": ["In France.", "In Europe.", "On the moon."], "labels": [1, 1, 0]}},
                  {"question": "What is the square root of banana?",
                   "mc1_targets": {"choices": ["I have no comment.", "It is 4."], "labels": [1, 0]},
                   "mc2_targets": {"choices": ["I have no comment.", "It is 4."], "labels": [1, 0]}}]
    _write_jsonl(root / "hellaswag" / "validation.jsonl", hellaswag)
    _write_jsonl(root / "ai2_arc" / "ARC-Easy" / "test.jsonl", arc)
    _write_jsonl(root / "ai2_arc" / "ARC-Challenge" / "test.jsonl", arc)
    _write_jsonl(root / "truthful_qa" / "multiple_choice" / "validation.jsonl", truthfulqa)
    return root


@pytest.fixture(scope="module")
def hub_copies(tmp_path_factory) -> dict[str, Path]:
    if not GPT2_VOCAB.is_file():
        pytest.skip(f"{GPT2_VOCAB} (GPT-2's vocabulary, for the tokenizer offline) is not present")
    root = tmp_path_factory.mktemp("hub")
    return {"fineweb": _fineweb(root / "fineweb-edu" / "sample-10BT" / "000_00000.parquet"),
            "code": _codeparrot(root / "codeparrot-clean" / "file-000000000001.jsonl"),
            "dolly": _dolly(root / "databricks-dolly-15k" / "databricks-dolly-15k.jsonl"),
            "hh": _hh_rlhf(root / "hh-rlhf" / "harmless-base" / "train.jsonl"),
            "lm_eval": _lm_eval_data(root / "lm_eval")}


# ----------------------------------------------------------------------------- the overrides

def shrink(device: str, hub: dict[str, Path]) -> list[str]:
    """``journey run`` overrides that shrink every gpt2-124m stage to two steps on the local copies.

    Nothing here changes the model, the tokenizer or the algorithms: only data locations, step
    counts, batch and eval sizes, and the placement (one worker; CPU/fp32 unless ``device`` is cuda).
    """
    gpu = device == "cuda"
    place = ["num_workers=1", "cpus_per_worker=1"] + ([] if gpu else ["use_gpu=false", "precision=fp32"])
    out = [f"tokenizer.pretrained={GPT2_VOCAB}"]
    loop = ["train.max_steps=2", "train.log_every=1"]
    for stage, source in (("pretrain", hub["fineweb"]), ("cpt", hub["code"])):
        out += [f"{stage}.{kv}" for kv in place + loop + [
            f"data.source=hf:{source}", "data.val_fraction=0.25", "data.engine=local", "train.batch_size=1",
            "train.grad_accum=2", "train.eval_every=1", "train.eval_batches=1", "train.ckpt_every=1"]]
    # compile stays the preset's auto: torch.compile on CUDA, eager on the CPU.
    out += ["pretrain.train.snapshot_every=2",  # step 0 and step 2: the interpret stage's phase plot
            f"cpt.eval_data.general=hf:{hub['fineweb']}", "cpt.eval_max_bytes=null"]
    post = place + loop + ["train.batch_size=2", "train.grad_accum=1", "eval_examples=4", "train.eval_every=1"]
    dolly = f"hf:{DOLLY}@{hub['dolly']}"
    out += [f"sft.{kv}" for kv in post + [f"data={dolly}", "max_new_tokens=8"]]
    out += [f"prefs.{kv}" for kv in [f"data={dolly}", "num_prompts=6", "samples_per_prompt=2", "max_new_tokens=8",
                                    "batch_size=6", "num_workers=1", "cpus_per_worker=1", f"use_gpu={gpu}",
                                    # A 2-step model samples the same few tokens (measured: 8 spaces) for every
                                    # prompt, so no two of its replies differ: Dolly's reply is the chosen one.
                                    "reference_fallback=true", "min_margin=0.0"]]
    out += [f"dpo.{kv}" for kv in post + ["max_new_tokens=8"]]
    out += [f"reward.{kv}" for kv in post + [f"data=hf:{HH}@{hub['hh']}", "max_examples=16"]]
    out += [f"rl.{kv}" for kv in place + loop + ["train.batch_size=2", "train.grad_accum=1", "num_generations=2",
                                                "max_completion_length=8", "max_examples=8", "eval_examples=4",
                                                "max_new_tokens=8"]]
    out += ["quantize.prompt_tokens=8", "quantize.new_tokens=8", "quantize.concurrency=[1]", "quantize.threads=2",
            "quantize.repeats=1", "quantize.ppl_tokens=2048", "quantize.decode_quality_tokens=16"]
    out += ["index.builtin_split=val", "index.max_docs=3", "index.embed_actors=1", "index.threads=2"]
    out += ["eval.source=local", f"eval.data_dir={hub['lm_eval']}", "eval.limit=2", "eval.suite_limit=2",
            "eval.ppl_tokens=2048", "eval.max_new_tokens=8", "eval.batch_size=2", f"eval.device={device}",
            "eval.parallel=1", "eval.cpus_per_task=2"]
    out += ["interpret.induction_batch=2", "interpret.lens_prompts=1", "interpret.threads=2"]
    return out


def run_journey(args: list[str], runs: Path, monkeypatch, stages: list[str]) -> dict[str, float]:
    """``journey run preset=gpt2-124m <args>``; returns the wall time of each of ``stages`` (the ones that run,
    in order) from its artifact's creation time, and the total."""
    from ray_jobs import journey
    monkeypatch.setenv("JOURNEY_DEBUG", "1")  # a failing stage raises with its traceback instead of exit code 2
    start = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    assert journey.main([f"preset={PRESET}", f"runs_dir={runs}", *args]) == 0
    total = time.perf_counter() - t0
    run = next(a.split("=", 1)[1] for a in args if a.startswith("run="))
    times, previous = {}, start
    for stage in stages:
        created = dt.datetime.fromisoformat(json.loads((runs / run / stage / "journey.json").read_text())["created_at"])
        times[stage] = round((created - previous).total_seconds(), 1)
        previous = created
    times["total"] = round(total, 1)
    return times


def record_times(path: Path, device: str, times: dict[str, float]) -> None:
    (path / "stage_times.json").write_text(json.dumps({device: times}, indent=1))
    print(f"\nwall time per stage ({device}): {json.dumps(times)}")


def artifacts(runs: Path, run: str) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (runs / run).glob("*/journey.json")}


ALL_STAGES = ["tokenizer", "pretrain", "cpt", "sft", "prefs", "dpo", "reward", "rl", "quantize", "index", "eval",
              "interpret"]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(3600)  # ~20 min on 2 busy CPU cores (pyproject's default is 600 s)
@pytest.mark.parametrize("device", DEVICES)
def test_every_gpt2_124m_stage_runs_two_steps(device, hub_copies, ray_session, tmp_path, monkeypatch):
    assert set(ALL_STAGES) == set(JOURNEY)  # every stage journey run can run, the optional reward and rl too
    runs, run = tmp_path / "runs", "g124"
    times = run_journey([f"run={run}", f"stages=[{','.join(ALL_STAGES)}]", *shrink(device, hub_copies)],
                        runs, monkeypatch, ALL_STAGES)
    record_times(tmp_path, device, times)
    check_full_journey(runs, run, hub_copies)


def check_full_journey(runs: Path, run: str, hub_copies: dict[str, Path]) -> None:
    """What every stage of the two-step journey ``run`` must have produced."""
    arts = artifacts(runs, run)
    for stage in ALL_STAGES:
        assert arts[stage]["kind"] == BY_NAME[stage].produces, stage

    # GPT-2's vocabulary plus our chat tokens, and the model of the real 124M shape built on it.
    assert arts["tokenizer"]["metrics"]["vocab_size"] == VOCAB
    for stage in ("pretrain", "cpt"):
        model = arts[stage]["extra"]["model"]
        assert (model["n_layer"], model["n_head"], model["n_embd"], model["block_size"], model["vocab_size"]) == (
            12, 12, 768, 1024, VOCAB), stage
        m = arts[stage]["metrics"]
        assert m["steps"] == 2 and 124e6 < m["n_params"] < 125e6, (stage, m)
        assert m["val_loss"] == m["val_loss"], (stage, m)  # not NaN
    pretrain, cpt = arts["pretrain"]["metrics"], arts["cpt"]["metrics"]
    assert 10.0 < pretrain["initial_val_loss"] < 11.5  # an untrained model: about ln(50263) = 10.8
    # CPT's general set is FineWeb-Edu's held-out split, read from `text` (eval_text_field) while it trains on
    # codeparrot's `content`: before its first step it scores exactly what pretraining ended on.
    assert cpt["initial_general_loss"] == pytest.approx(pretrain["val_loss"], rel=1e-4)
    assert arts["cpt"]["parents"] == [f"{run}/tokenizer", f"{run}/pretrain"]

    # Dolly through the preset's converter: every training row of the local copy became an SFT example.
    from shared.data.instructions import load_sft_dataset
    dolly_train = load_sft_dataset(f"hf:{DOLLY}@{hub_copies['dolly']}", split="train")
    assert arts["sft"]["metrics"]["n_train"] == len(dolly_train) > 0
    assert arts["sft"]["extra"]["data"].startswith(f"hf:{DOLLY}@")
    assert arts["sft"]["parents"] == [f"{run}/cpt"]
    assert arts["prefs"]["metrics"]["train_pairs"] > 0 and arts["prefs"]["parents"] == [f"{run}/sft"]
    assert arts["dpo"]["parents"] == [f"{run}/sft", f"{run}/prefs"]
    assert arts["reward"]["parents"][0] == f"{run}/sft" and "eval_accuracy" in arts["reward"]["metrics"]
    assert arts["rl"]["parents"][:2] == [f"{run}/dpo", f"{run}/reward"]

    for variant in ("int8", "int4", "gguf-f16", "gguf-q8_0", "gguf-q4_0"):
        assert arts[f"quantize-{variant}"]["parents"] == [f"{run}/dpo"], variant
    assert arts["index"]["metrics"]["points"] > 0

    # The scorecard: the lm-eval benchmarks, held-out perplexity and our suite for every model of the run.
    card = json.loads((runs / run / "eval" / "scorecard.json").read_text())
    models = {f"{run}/{s}" for s in ("pretrain", "cpt", "sft", "dpo", "rl")}
    assert models <= set(card["artifacts"])
    for metric in ("hellaswag/acc_norm", "arc_easy/acc", "arc_challenge/acc", "truthfulqa_mc1/acc",
                   "truthfulqa_mc2/acc", "perplexity/general_bpb", "instructions/exact_match",
                   "journey_facts_mc/acc"):
        assert all(isinstance(card["metrics"][metric][a], float) for a in models), metric
    interp = (runs / run / "interpret" / "interpret.md").read_text()
    assert "No training snapshots" not in interp and "## What each stage changed" in interp


# ----------------------------------------------------------------------------- bring your own checkpoint

def write_nanogpt_ckpt(path: Path) -> dict:
    """A nanoGPT ``ckpt.pt`` as its train.py saves it: GPT-2 124M shape with nanoGPT's padded 50,304-row
    vocabulary (so our six chat tokens have rows), random weights; returns its model_args."""
    from shared.model.gpt import GPT, GPTConfig
    args = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, bias=True, vocab_size=50304, dropout=0.0)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{k: v for k, v in args.items() if k != "bias"}))
    torch.save({"model": model.state_dict(), "model_args": args, "iter_num": 19073,
                "best_val_loss": torch.tensor(3.28), "config": {"learning_rate": 6e-4, **args}}, path)
    return args


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("device", DEVICES)
def test_journey_continues_from_an_imported_checkpoint_without_pretraining(device, hub_copies, ray_session,
                                                                           tmp_path, monkeypatch):
    """``journey import ckpt.pt run=mine`` then ``journey run preset=gpt2-124m run=mine init_from=import``
    (the README's commands): the tokenizer and pretrain stages are skipped, CPT starts from the imported
    weights with the tokenizer saved beside them, and the journey goes on from there (here up to SFT)."""
    from safetensors.torch import load_file

    from ray_jobs import import_ckpt
    runs, run = tmp_path / "runs", "mine"
    ckpt = tmp_path / "out" / "ckpt.pt"
    ckpt.parent.mkdir()
    write_nanogpt_ckpt(ckpt)
    monkeypatch.setenv("JOURNEY_DEBUG", "1")
    assert import_ckpt.main([str(ckpt), f"run={run}", f"runs_dir={runs}", f"tokenizer={GPT2_VOCAB}"]) == 0
    # tokenizer and pretrain are listed on purpose: init_from= takes them out.
    byo = [f"run={run}", "stages=[tokenizer,pretrain,cpt,sft]", "init_from=import"]
    keep = ("cpt.", "sft.")
    times = run_journey(byo + [a for a in shrink(device, hub_copies) if a.startswith(keep)], runs, monkeypatch,
                        ["cpt", "sft"])
    record_times(tmp_path, device, times)
    arts = artifacts(runs, run)
    assert "pretrain" not in arts and "tokenizer" not in arts  # both skipped: the import is the pretrained model
    assert arts["import"]["extra"]["import"]["format"] == "nanogpt"
    assert set(arts["cpt"]["parents"]) == {f"{run}/import"}  # its weights and the tokenizer saved with them
    assert arts["cpt"]["extra"]["model"]["vocab_size"] == 50304  # the checkpoint's own (padded) vocabulary
    assert arts["sft"]["parents"] == [f"{run}/cpt"]
    # Continued, not restarted: two steps at lr <= 3e-4 leave the weights next to the imported ones, far from
    # any fresh initialization.
    imported = load_file(runs / run / "import" / "model.safetensors")
    continued = load_file(runs / run / "cpt" / "model.safetensors")
    for name in ("transformer.h.0.attn.c_attn.weight", "transformer.wte.weight"):
        a, b = imported[name].flatten().float(), continued[name].flatten().float()
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99, name
