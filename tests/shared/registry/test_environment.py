"""Each artifact records where it was made; manifests from before that still load."""
from __future__ import annotations

import json
import time

from shared.registry import Registry
from shared.registry.registry import VERSIONED_PACKAGES, environment


def test_register_records_the_environment(tmp_path):
    reg = Registry(tmp_path)
    reg.stage_dir("r", "s")
    art = reg.register("r", "s", "report")
    env = Registry.load(art.dir).environment
    assert env == art.environment and env["python"] and env["cpu_count"] >= 1 and env["memory_bytes"] > 0
    assert set(env["versions"]) == set(VERSIONED_PACKAGES) and env["versions"]["torch"]  # torch is installed
    assert isinstance(env["gpus"], list)


def test_an_old_manifest_without_environment_loads(tmp_path):
    reg = Registry(tmp_path)
    reg.stage_dir("r", "s")
    art = reg.register("r", "s", "report")
    data = json.loads((art.dir / "journey.json").read_text())
    del data["environment"]
    (art.dir / "journey.json").write_text(json.dumps(data))
    assert Registry.load(art.dir).environment == {}


def test_environment_is_cheap_and_a_copy():
    t0 = time.perf_counter()
    first = environment()
    first["hostname"] = "changed"
    assert environment()["hostname"] != "changed"
    assert time.perf_counter() - t0 < 1.0
