"""Evaluation: every checkpoint of the journey measured the same way.

- ``checkpoint``: ``require_causal_lm`` and ``EvalError`` (what every evaluator checks first).
- ``generate`` / ``chat_eval``: batched chat generation and scoring of replies against checks.
- ``perplexity``: held-out general/domain perplexity and the loss curves the stages logged.
- ``tasks``: our own suite, one task per file (instructions, chat format, tool use, safety, RAG).
- ``harness``: lm-evaluation-harness on any checkpoint (standard tasks from local files or the hub,
  and our own lm-eval tasks over builtin data).
- ``scorecard``: ``journey eval``; all artifacts of a run on the same tasks, deltas against parents.
"""
