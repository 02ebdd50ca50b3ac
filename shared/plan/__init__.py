"""``journey plan``: every stage's data, tokens, steps, memory per GPU and time, and the problems, before a run.

Modules: ``memory`` (the estimator, pure functions with their formulas), ``throughput`` (measured
here or a published reference), ``data_check`` (is the data there, with the fields the stage
reads), ``hardware`` (the GPU memory is checked against), ``plan`` (one row per stage and the
problems), ``render`` (text table or JSON). The configs come resolved from the caller
(``ray_jobs.plan``, the way ``journey run`` resolves them); this package never imports ``ray_jobs``.
"""
from shared.plan.hardware import Gpu, target_gpu, visible_gpus
from shared.plan.plan import Plan, Problem, StageRow, make_plan
from shared.plan.render import render_text, to_json

__all__ = ["Gpu", "Plan", "Problem", "StageRow", "make_plan", "render_text", "target_gpu", "to_json", "visible_gpus"]
