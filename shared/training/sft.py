"""Supervised fine-tuning with TRL's ``SFTTrainer``: chat data or a plain text corpus.

Rows are either conversations (``{"messages": [...]}``, rendered by the one chat template saved
with the tokenizer; loss on the assistant's tokens only when ``assistant_only_loss``) or text
(``{"text": ...}``, every token trained: continued pretraining / domain fine-tuning through the same
code path). The template's ``{% generation %}`` blocks tell TRL which tokens the assistant wrote.

Worker side, ``build_trainer`` (``ALGORITHM``, run by ``trl_worker``); driver side, ``run_sft``:
the rows, the fit (``posttrain.fit_trl``), base vs tuned on held-out instructions, the artifact.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from shared.data import is_heldout_doc, iter_corpus
from shared.data.instructions import load_sft_dataset
from shared.eval.chat_eval import evaluate_models
from shared.registry import Artifact, Registry
from shared.chat_format import CHAT_TEMPLATE
from shared.training.posttrain import arrow_safe, fit_trl, resolve_model, train_metrics
from shared.training.posttrain_config import SFTJobConfig
from shared.training.replay import mixed_rows, replay_chars_needed, replay_documents
from shared.training.trl_worker import Algorithm, TrainRows


def conversational(rows: list[dict[str, Any]]) -> bool:
    return bool(rows) and "messages" in rows[0]


def build_trainer(model, tokenizer, cfg: SFTJobConfig, rows: TrainRows, args: dict[str, Any]):
    """An ``SFTTrainer`` over ``rows`` for the loaded ``model`` with the common ``TrainingArguments`` ``args``."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    chat = conversational(rows.train)
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE  # checkpoints saved before the template had generation blocks
    train, evaluated, pretokenized = rows.train, rows.eval, chat and bool(rows.replay_texts)
    if pretokenized:  # tokenized here: TRL's own path wants every row chat or every row text
        train = mixed_rows(tokenizer, rows.train, rows.replay_texts, cfg.replay_fraction, cfg.train.max_length,
                           CHAT_TEMPLATE, cfg.seed, assistant_only=cfg.assistant_only_loss)
        # the held-out rows too, so that eval loss stays the loss on the assistant's tokens
        evaluated = mixed_rows(tokenizer, rows.eval, [], 0.0, cfg.train.max_length, CHAT_TEMPLATE, cfg.seed,
                               assistant_only=cfg.assistant_only_loss)
    # Pretokenized rows carry their loss mask (assistant_masks), which TRL applies without being asked.
    sft_args = SFTConfig(**args, max_length=cfg.train.max_length, packing=cfg.packing,
                         assistant_only_loss=chat and cfg.assistant_only_loss and not pretokenized,
                         dataset_text_field="text", dataset_num_proc=None)
    eval_ds = Dataset.from_list(evaluated) if evaluated else None
    return SFTTrainer(model=model, args=sft_args, train_dataset=Dataset.from_list(train),
                      eval_dataset=eval_ds, processing_class=tokenizer)


ALGORITHM = Algorithm("sft", build_trainer)


# ----------------------------------------------------------------------------- driver side

TEXT_SOURCES = ("builtin:python-docs", "builtin:python-code")


def is_text_corpus(source: str) -> bool:
    """A pretraining-style corpus (every token trained) rather than instruction data."""
    return source in TEXT_SOURCES or Path(source.removeprefix("file:")).suffix in (".txt", ".md") or (
        Path(source.removeprefix("file:")).is_dir())


def text_rows(source: str, max_examples: int | None, eval_examples: int) -> tuple[list[dict], list[dict]]:
    """Documents of a text corpus split into train / held-out rows by the corpus' own hash split."""
    train, heldout = [], []
    for doc in iter_corpus(source):
        (heldout if is_heldout_doc(doc.id) else train).append({"text": doc.text})
        if max_examples and len(train) >= max_examples and len(heldout) >= eval_examples:
            break
    return train[:max_examples] if max_examples else train, heldout[:eval_examples]


def chat_examples(source: str, split: str, limit: int | None) -> list[dict[str, Any]]:
    return load_sft_dataset(source, split=split, max_examples=limit)


def training_rows(cfg: SFTJobConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """Trainer rows (train, eval) of ``cfg.data``, chat messages or plain text, and the held-out
    chat examples with their checks (empty for text) for the after-training comparison."""
    if is_text_corpus(cfg.data):
        return (*text_rows(cfg.data, cfg.max_examples, cfg.eval_examples), [])
    train = chat_examples(cfg.data, "train", cfg.max_examples)
    heldout = chat_examples(cfg.data, "heldout", cfg.eval_examples or None)[: cfg.eval_examples]
    return ([{"messages": arrow_safe(e["messages"])} for e in train],
            [{"messages": arrow_safe(e["messages"])} for e in heldout], heldout)


def run_sft(cfg: SFTJobConfig) -> Artifact:
    """Fine-tune ``cfg.init_from`` on ``cfg.data`` (chat or text) and register the checkpoint."""
    t0 = time.perf_counter()
    registry = Registry(cfg.runs_dir)
    model = resolve_model(registry, cfg.init_from, cfg.run)
    chat = not is_text_corpus(cfg.data)
    train_rows, eval_rows, heldout_ex = training_rows(cfg)
    replay = (replay_documents(cfg.replay, replay_chars_needed(train_rows, cfg.replay_fraction), cfg.seed)
              if chat and cfg.replay_fraction > 0 else [])
    out_dir = registry.stage_dir(cfg.run, cfg.stage, overwrite=cfg.overwrite)
    t_data = time.perf_counter() - t0
    fit = fit_trl(cfg, ALGORITHM, model, out_dir, TrainRows(train_rows, eval_rows, replay_texts=replay))
    metrics = train_metrics(fit.history, fit.final_eval)
    metrics.update(n_train=len(train_rows), n_eval=len(eval_rows), n_replay_docs=len(replay))
    t1 = time.perf_counter()
    if chat and heldout_ex:
        metrics.update(heldout_comparison(model.path, str(out_dir), heldout_ex, out_dir, cfg.max_new_tokens))
    timings = {"data_s": t_data, "train_s": fit.train_s, "eval_s": time.perf_counter() - t1}
    return registry.register(cfg.run, cfg.stage, "hf-model", parents=model.parent_ids, config=cfg,
                             metrics=metrics, timings=timings, extra={"data": cfg.data, "chat": chat,
                                                                      "resumed_from_step": fit.resumed_from_step})


def heldout_comparison(base_path: str, tuned_path: str, examples: list[dict], out_dir, max_new_tokens: int):
    """Base vs tuned on held-out examples: ``base_<metric>`` and ``<metric>`` for the artifact."""
    result = evaluate_models({"base": base_path, "tuned": tuned_path}, examples, out_dir, "heldout_eval",
                             max_new_tokens=max_new_tokens)
    metrics = {f"base_{k}": v for k, v in result["base"]["summary"].items() if k != "n"}
    metrics.update({k: v for k, v in result["tuned"]["summary"].items() if k != "n"})
    return metrics
