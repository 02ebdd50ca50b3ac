"""Evaluation: generation for checks (``generate``) and chat scoring (``chat_eval``).

Later: lm-evaluation-harness tasks, perplexity tracking and the scorecard (the evaluation issue).
"""
