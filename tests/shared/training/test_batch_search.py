"""The largest-micro-batch search of ``journey experiment parallelism`` (``parallel.batch_search``), without Ray:
the doubling-then-bisection against fake "fits" oracles, ranks agreeing, the CPU held-bytes meter, the config."""
from __future__ import annotations

import threading

import pytest
import torch

from shared.config import ConfigError, load_config
from shared.training.experiments import ExperimentConfig
from shared.training.parallel_experiment import (BatchSearchConfig, HeldBytes, ParallelExperimentConfig, agreed,
                                                 max_trials, search_largest_batch)


def _counting(limit: int):
    calls: list[int] = []

    def fits(b: int) -> bool:
        calls.append(b)
        return b <= limit
    return fits, calls


@pytest.mark.parametrize("max_batch", [1, 2, 7, 64, 100])
def test_finds_the_exact_boundary_within_the_trial_bound(max_batch):
    for limit in range(0, max_batch + 3):
        fits, calls = _counting(limit)
        found = search_largest_batch(fits, max_batch)
        assert found.largest == min(limit, max_batch), (limit, found)
        assert found.capped == (limit >= max_batch)
        assert len(calls) == len(found.trials) <= max_trials(max_batch)
        assert len(set(calls)) == len(calls)  # never tries a size twice
        assert all(ok == (b <= limit) for b, ok in found.trials)


def test_doubles_then_bisects():
    found = search_largest_batch(lambda b: b <= 21, 64)
    assert [b for b, _ in found.trials] == [1, 2, 4, 8, 16, 32, 24, 20, 22, 21]


def test_monotone_in_the_budget():
    """A rank holding 3 MB of state plus 1.1 MB per sequence: a larger budget never fits a smaller batch."""
    def largest(budget_mb: float) -> int:
        return search_largest_batch(lambda b: 3.0 + 1.1 * b <= budget_mb, 256).largest
    answers = [largest(mb) for mb in range(1, 400, 7)]
    assert answers == sorted(answers) and answers[0] == 0 and answers[-1] == 256
    assert largest(3.0 + 1.1 * 40) == 40


def test_ranks_agree_even_when_only_one_runs_out():
    """Two ranks in lockstep, each asking ``agreed``-style (AND of both verdicts, here through a barrier):
    rank 1 fits up to 23, rank 0 up to 37; both must settle on 23 along the same trials."""
    limits, results = [37, 23], [None, None]
    verdicts = [None, None]
    barrier = threading.Barrier(2)

    def rank(r: int) -> None:
        def fits(b: int) -> bool:
            verdicts[r] = b <= limits[r]
            barrier.wait()
            both = all(verdicts)
            barrier.wait()  # both have read before the next trial overwrites
            return both
        results[r] = search_largest_batch(fits, 64)
    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results[0] == results[1] and results[0].largest == 23


def test_agreed_is_the_local_verdict_without_a_process_group():
    assert agreed(True, torch.device("cpu")) and not agreed(False, torch.device("cpu"))


def test_held_bytes_counts_what_is_kept_and_the_peak_of_temporaries():
    held = HeldBytes()
    with held.window():
        kept = torch.ones(1000, 1000)  # 4 MB kept
        tmp = torch.ones(2000, 1000)  # 8 MB freed inside the window
        del tmp
    assert held.level == pytest.approx(4e6, rel=0.01)
    assert held.rise == pytest.approx(12e6, rel=0.01)  # above the level the window started from
    with held.window():
        del kept
        again = torch.ones(500, 1000)  # 2 MB, while the 4 MB are gone: no rise
        del again
    assert held.level == pytest.approx(0, abs=1e4) and held.rise == pytest.approx(0, abs=1e4)


def test_the_config_needs_a_budget_on_cpu_and_names_the_renamed_key():
    with pytest.raises(ConfigError, match="parallel.batch_search.memory_budget_gb is required on CPU"):
        ParallelExperimentConfig(batch_search=BatchSearchConfig(memory_budget_gb=None)).validate()
    ParallelExperimentConfig(use_gpu=True, batch_search=BatchSearchConfig(memory_budget_gb=None)).validate()
    ParallelExperimentConfig(batch_search=BatchSearchConfig(enabled=False, memory_budget_gb=None)).validate()
    with pytest.raises(ConfigError, match="max_micro_batch must be >= 1"):
        ParallelExperimentConfig(batch_search=BatchSearchConfig(max_micro_batch=0)).validate()
    with pytest.raises(ConfigError, match="use parallel.batch_search.memory_budget_gb"):
        load_config(ExperimentConfig, "experiment", None, base={"parallel": {"memory_budget_mb": 64}})


def test_presets_turn_the_search_on():
    cpu = load_config(ExperimentConfig, "experiment", None)
    assert cpu.parallel.batch_search.enabled and cpu.parallel.batch_search.memory_budget_gb
    gpu = load_config(ExperimentConfig, "experiment", "parallelism-gpu")
    assert gpu.parallel.batch_search.enabled and gpu.parallel.batch_search.memory_budget_gb == 80
