"""The python sandbox's contract (result fields, limits, modes, config) and the ``python`` tool in the executor."""
from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from shared.config import ConfigError
from shared.tools import ToolError
from shared.tools.executor import MAX_CODE_CHARS, execute, run_python_tool
from shared.tools.sandbox import SandboxResult, _run, candidate_modes, isolation_layers, run_python
from shared.tools.sandbox_config import LAYERS, SandboxConfig

FAST = SandboxConfig(wall_s=5, cpu_s=2)


def test_prints_come_back_and_the_run_is_ok():
    result = run_python("print(6 * 7)\nprint('done')", FAST)
    assert result.ok and result.exit_code == 0 and not result.timed_out and not result.truncated
    assert result.stdout == "42\ndone\n" and result.stderr == "" and result.killed_reason is None
    assert result.duration_s > 0
    assert {"rlimits", "audit-hook"} <= set(result.layers) and result.layers == isolation_layers(FAST)


def test_an_exception_shows_the_snippets_own_traceback():
    result = run_python("x = 1\ny = x / 0", FAST)
    assert not result.ok and result.exit_code == 1 and result.killed_reason is None
    assert 'File "<snippet>", line 2' in result.stderr and "y = x / 0" in result.stderr
    assert result.stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    assert "sandbox_runner" not in result.stderr and "json.loads" not in result.stderr  # no runner frames


def test_syntax_errors_and_exit_codes():
    broken = run_python("def f(:\n  pass", FAST)
    assert broken.exit_code == 1 and "SyntaxError" in broken.stderr
    assert run_python("import sys; print('bye'); sys.exit(3)", FAST).exit_code == 3


def test_the_snippet_runs_as_main_with_an_empty_stdin_and_stdlib_imports():
    code = ("import json, sys, collections, dataclasses\n"
            "@dataclasses.dataclass\nclass P:\n    x: int\n"
            "print(__name__, repr(sys.stdin.read()), json.dumps(collections.Counter('aab')), P(1))")
    result = run_python(code, FAST)
    assert result.stdout == "__main__ '' {\"a\": 2, \"b\": 1} P(x=1)\n", result.stderr


def test_the_work_dir_is_writable_and_fresh_each_run():
    code = "import os\nprint(sorted(os.listdir('.')))\nopen('note.txt', 'w').write('hi')\nprint(open('note.txt').read())"
    first, second = run_python(code, FAST), run_python(code, FAST)
    assert first.stdout == second.stdout == "[]\nhi\n", (first.stderr, second.stderr)


def test_the_host_temp_dir_is_removed_after_each_run(monkeypatch):
    parent = Path(tempfile.mkdtemp(prefix="sandbox-parent-"))
    parent.chmod(0o755)  # a per-run uid must be able to reach its work dir in every mode
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(parent))
        assert run_python("open('f', 'w').write('x' * 100); print('ok')", FAST).stdout == "ok\n"
        assert run_python("while True: pass", SandboxConfig(wall_s=1, cpu_s=5)).timed_out
        assert list(parent.iterdir()) == []
    finally:
        shutil.rmtree(parent)


@pytest.mark.parametrize("mode", candidate_modes(), ids=lambda m: m.name)
def test_every_mode_this_host_offers_runs_a_snippet(mode):
    """The probe picks the first of these that works; each one that works must be a real sandbox."""
    result = _run("print(sum(range(10)))", FAST, mode)
    if not result.ok and mode.name != "bare":
        pytest.skip(f"{mode.name} mode is unavailable on this host: {result.stderr[-200:]}")
    assert result.stdout == "45\n" and set(mode.layers) <= set(result.layers)


def test_concurrent_runs_do_not_interfere():
    results: dict[int, SandboxResult] = {}

    def run(i: int) -> None:
        results[i] = run_python(f"open('mine', 'w').write('{i}')\nprint(open('mine').read())", FAST)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {i: r.stdout for i, r in results.items()} == {i: f"{i}\n" for i in range(3)}


def test_result_text_says_what_went_wrong():
    base = dict(ok=False, stdout="", stderr="", exit_code=0, timed_out=False, truncated=False, killed_reason=None,
                duration_s=0.1)
    assert SandboxResult(**{**base, "ok": True}).text() == "(no output)"
    assert SandboxResult(**{**base, "stdout": "4\n", "ok": True}).text() == "4"
    assert SandboxResult(**{**base, "stdout": "a\n", "stderr": "boom\n", "exit_code": 1}).text() == \
        "a\nstderr:\nboom\n[exit code 1]"
    assert SandboxResult(**{**base, "stdout": "xxx", "truncated": True, "exit_code": -9,
                            "killed_reason": "output limit of 3 bytes"}).text() == \
        "xxx\n[output truncated: the snippet printed more than the limit and was stopped]\n" \
        "[stopped: output limit of 3 bytes]"


@pytest.mark.parametrize("overrides, why", [
    ({"wall_s": 0}, "wall_s"), ({"cpu_s": 0}, "cpu_s"), ({"memory_mb": -1}, "memory_mb"),
    ({"required_layers": ["seccomp"]}, "unknown isolation layer 'seccomp'"),
    ({"uid_base": 0}, "uid_base"), ({"expose_paths": ["usr"]}, "absolute"),
])
def test_config_errors_name_the_field(overrides, why):
    with pytest.raises(ConfigError, match=why):
        run_python("print(1)", SandboxConfig(**overrides))


def test_a_required_layer_the_host_lacks_refuses_to_run():
    missing = [layer for layer in LAYERS if layer not in isolation_layers(FAST)]
    if not missing:
        pytest.skip("this host provides every layer")
    with pytest.raises(ToolError, match=f"lacks required layers.*{missing[0]}"):
        run_python_tool("print(1)", SandboxConfig(required_layers=[missing[0]]))


def test_the_python_tool_runs_through_the_executor():
    assert execute({"name": "python", "arguments": {"code": "print(2 + 2)"}}) == "4"
    assert execute('{"name": "python", "arguments": {"code": "pass"}}') == "(no output)"
    failed = execute({"name": "python", "arguments": {"code": "raise ValueError('nope')"}})
    assert "ValueError: nope" in failed and failed.endswith("[exit code 1]")


@pytest.mark.parametrize("arguments, why", [
    ({}, "code"), ({"code": ""}, "code"), ({"code": "x" * (MAX_CODE_CHARS + 1)}, "code"),
    ({"code": "print(1)", "timeout": 99}, "timeout"), ({"code": 5}, "code"),
])
def test_the_python_tool_rejects_bad_arguments(arguments, why):
    with pytest.raises(ToolError, match=f"invalid arguments for 'python'.*{why}"):
        execute({"name": "python", "arguments": arguments})
