"""Number formatting for the report: one place, so the HTML, the Markdown and the tests agree."""
from __future__ import annotations

import math
from typing import Any


def is_number(value: Any) -> bool:
    """A real, finite number (not a bool, not NaN): something a sentence may quote."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def num(value: Any, digits: int = 4) -> str:
    """``value`` to ``digits`` significant digits (integers as they are); ``-`` when it is not a number."""
    if not is_number(value):
        return "-" if value is None else str(value)
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e15):
        return f"{int(value):,}" if abs(value) >= 10_000 else str(int(value))
    if 10 ** digits <= abs(value) < 1e15:  # no exponent for a large plain number: 14,671 not 1.467e+04
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def signed(value: float, digits: int = 3) -> str:
    """A delta with its sign (``+0.0312``, ``-1.08``); a true minus sign reads better in tables."""
    return f"{value:+.{digits}g}".replace("-", "−")


def pct(value: float, digits: int = 1) -> str:
    """A rate in 0..1 as a percentage: ``0.2313`` -> ``23.1%``."""
    return f"{value * 100:.{digits}f}%"


def count(value: float) -> str:
    """A large count, readable: ``1228800`` -> ``1.23 M``, ``14461.7`` -> ``14.5 k``."""
    for size, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.3g}"


def megabytes(value: float) -> str:
    return f"{value / 1e6:.2f}\u00a0MB"  # a no-break space: a table column never splits number and unit


def duration(seconds: float) -> str:
    """``754.2`` -> ``12 min 34 s``; under a minute with one decimal under ten seconds."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


#: Short forms of long metric-name parts, for boxes and narrow columns.
SHORT = (("decode_tokens_per_s", "decode tok/s"), ("prefill_tokens_per_s", "prefill tok/s"),
         ("tokens_per_s", "tok/s"), ("_", " "))


def label(metric: str) -> str:
    """A metric name as a person reads it: ``fp32/decode_tokens_per_s`` -> ``fp32/decode tok/s``."""
    for long, short in SHORT:
        metric = metric.replace(long, short)
    return metric


def value(metric: str, v: Any) -> str:
    """A metric's value as a table shows it: rates as they are (0..1), lists joined, the rest via ``num``."""
    if isinstance(v, (list, tuple)):
        return " / ".join(num(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}: {num(x)}" for k, x in v.items())
    return num(v)
