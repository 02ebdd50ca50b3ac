"""The small run every report test renders (``small_run.build``)."""
from __future__ import annotations

import pytest

from shared.registry import Registry
from tests.shared.report.small_run import build


@pytest.fixture
def small_run(tmp_path) -> Registry:
    return build(tmp_path / "runs")
