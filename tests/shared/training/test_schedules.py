import pytest

from shared.training.schedules import lr_at, warmup_steps


def test_warmup_as_ratio_or_steps():
    assert warmup_steps(0.1, 200) == 20
    assert warmup_steps(20, 200) == 20


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd", "constant"])
def test_warmup_rises_to_peak(schedule):
    lrs = [lr_at(s, 100, 1.0, schedule, warmup=10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))


def test_decay_shapes():
    cos = [lr_at(s, 100, 1.0, "cosine", 0, min_lr_ratio=0.1) for s in range(101)]
    lin = [lr_at(s, 100, 1.0, "linear", 0, min_lr_ratio=0.1) for s in range(101)]
    wsd = [lr_at(s, 100, 1.0, "wsd", 0, min_lr_ratio=0.1, decay_ratio=0.2) for s in range(101)]
    assert cos[100] == pytest.approx(0.1) and lin[100] == pytest.approx(0.1) and wsd[100] == pytest.approx(0.1)
    assert cos[50] == pytest.approx(0.55) and lin[50] == pytest.approx(0.55)
    assert cos[25] > lin[25]  # cosine stays high longer
    assert all(v == 1.0 for v in wsd[:80]) and wsd[90] == pytest.approx(0.55)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown lr schedule 'step'"):
        lr_at(0, 10, 1.0, "step")
