"""Document hooks our lm-eval task YAMLs name with ``!function utils.<name>``.

lm-eval loads this file by path (it is not a package of ours); keep it free of project imports so
the YAMLs work from any checkout. The behaviour follows lm-eval's own hellaswag and truthfulqa
tasks so that local numbers are the published benchmarks' numbers.
"""
from __future__ import annotations

import math
import re


def clean_hellaswag_text(text: str) -> str:
    """Strip WikiHow scraping artifacts: " [title]" ends a sentence, other "[...]" tags go."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def process_hellaswag_docs(dataset):
    """Add ``query`` (activity label + both context halves), cleaned ``choices`` and int ``gold``."""

    def one(doc: dict) -> dict:
        context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return {
            "query": clean_hellaswag_text(doc["activity_label"] + ": " + context),
            "choices": [clean_hellaswag_text(ending) for ending in doc["endings"]],
            "gold": int(doc["label"]),
        }

    return dataset.map(one)


def truthfulqa_mc2_results(doc: dict, results: list) -> dict:
    """MC2 score: share of the choices' total probability that falls on the true ones."""
    logliks = [ll for ll, _ in results]
    top = max(logliks)  # subtract the max before exp: tiny models give lls far below exp's range
    probs = [math.exp(ll - top) for ll in logliks]
    true_mass = sum(p for p, label in zip(probs, doc["mc2_targets"]["labels"]) if label == 1)
    return {"acc": true_mass / sum(probs)}
