"""``journey submit <stage>``: run one entry point as a Ray job on a cluster (``ray job submit``).

    journey submit pretrain --config tiny run=demo                  # to $RAY_ADDRESS or localhost:8265
    journey submit run preset=tiny run=demo --address http://ray-head:8265
    journey submit index --config tiny run=demo qdrant_url=http://qdrant:6333 --no-wait

is, exactly (``--dry-run`` prints it):

    ray job submit --address URL --submission-id journey-<stage>-<time> --working-dir <repo root>
        --runtime-env-json '{"excludes": [runs/, .venv/, ...], ...}' -- python -m ray_jobs.<module> ARGS...

``<stage>`` is ``run`` (the whole journey), a stage of the stage table (``shared.stages``, the
list ``journey --help`` prints) or its ``ray_jobs`` module's name. The working dir is uploaded to
the cluster (without runs/, the venv and caches), so the job runs the code you have, not the
image's; dependencies come from the image, and more per job through
``--runtime-env-json '{"pip": ["pkg==1.2"]}'`` (merged over ours). With ``RAY_AUTH_TOKEN`` set
(Ray >= 2.52 clusters with token auth: compose's .env, the k8s Secret), ``RAY_AUTH_MODE=token`` is
set for the submission. Waits for the job and streams its log unless ``--no-wait``; the exit code
is the job's (0: SUCCEEDED). It does not run anything locally: a config error is reported by the
job, except a ``--config`` file or preset that does not exist.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import secrets
import shlex
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from shared import stages

ROOT = Path(__file__).resolve().parents[1]
# A stage (or `run`, the whole journey) -> the ray_jobs module that runs it, from the stage table.
ALIASES = {"run": "journey", **{s.name: s.entry for s in stages.STAGES}}
# The configs/<dir>/ of each module's presets; None: it takes no --config.
CONFIG_DIRS = {"journey": None, **{s.entry: s.presets for s in stages.STAGES}}
# Never uploaded: artifacts, environments, caches. Ray also skips what .gitignore lists, but the image has none.
EXCLUDES = ["runs/", ".venv/", ".git/", "**/__pycache__/", "*.egg-info/", ".pytest_cache/", ".hypothesis/",
            ".env", "tests/", "benchmarks/", "docs/", "k8s/"]
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
AGENT_NOT_READY = "No available agent"  # a head that has just started; Ray itself says to retry


#: Modules with a ``__main__`` that are not jobs: the CLI, this module, and commands that only read or
#: print on the machine they run on (``journey plan``, ``journey report``).
NOT_JOBS = ("cli", "submit", "plan", "report")


def entry_points(root: Path = ROOT) -> list[str]:
    """Modules of ray_jobs/ that run with ``python -m`` (have a ``__main__`` block) as jobs (see ``NOT_JOBS``)."""
    return sorted(p.stem for p in (root / "ray_jobs").glob("*.py")
                  if p.stem not in NOT_JOBS and '__name__ == "__main__"' in p.read_text(encoding="utf-8"))


def stage_names() -> list[str]:
    """What ``journey submit`` takes: ``run`` and every stage of the table, in its order."""
    return list(ALIASES)


def resolve_stage(stage: str, root: Path = ROOT) -> str:
    """The ``ray_jobs`` module a stage name (or a module name) means; ValueError naming the valid ones otherwise.

    The module must also be in ``root``, the working dir that is uploaded.
    """
    module = ALIASES.get(stage, stage)
    if module not in CONFIG_DIRS:
        close = difflib.get_close_matches(stage, stage_names(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown stage {stage!r}; {hint}submit one of {stage_names()} (see `journey --help`)")
    if not (root / "ray_jobs" / f"{module}.py").is_file():
        raise ValueError(f"the working dir {root} has no ray_jobs/{module}.py; submit from a checkout of this project")
    return module


def check_config(module: str, config: str | None, working_dir: Path) -> None:
    """A ``--config`` must be a file inside the uploaded working dir or a preset of the stage."""
    if config is None:
        return
    config_dir = CONFIG_DIRS.get(module, module)
    if config_dir is None:
        raise ValueError(f"ray_jobs.{module} takes no --config; pass key=value overrides (preset=... for run)")
    if config.endswith((".yaml", ".yml")) or "/" in config:
        if Path(config).is_absolute() or not (working_dir / config).is_file():
            raise ValueError(f"--config {config}: not a file inside the working dir {working_dir}, which is what "
                             "the cluster gets; use a path relative to it or a preset name")
        return
    presets = sorted(p.stem for p in (working_dir / "configs" / config_dir).glob("*.yaml"))
    if config not in presets:
        raise ValueError(f"--config {config}: no preset configs/{config_dir}/{config}.yaml; presets: {presets}")


def runtime_env(extra_json: str | None = None) -> dict:
    """Our runtime env (upload excludes), with ``extra_json`` merged over it (lists are appended)."""
    env: dict = {"excludes": list(EXCLUDES), "env_vars": {"PYTHONUNBUFFERED": "1"}}
    if extra_json:
        try:
            extra = json.loads(extra_json)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--runtime-env-json is not JSON ({exc}); e.g. '{{\"pip\": [\"rich\"]}}'") from None
        for key, value in extra.items():
            if isinstance(value, list) and isinstance(env.get(key), list):
                env[key] = env[key] + value
            elif isinstance(value, dict) and isinstance(env.get(key), dict):
                env[key] = {**env[key], **value}
            else:
                env[key] = value
    return env


def _ray_cli() -> str:
    beside = Path(sys.executable).parent / "ray"  # the venv's, even when it is not on PATH
    return str(beside) if beside.exists() else "ray"


def submit_command(module: str, args: list[str], *, address: str, working_dir: Path, env: dict,
                   wait: bool = True, submission_id: str | None = None) -> list[str]:
    """The ``ray job submit`` argv that runs ``python -m ray_jobs.<module> ARGS`` on the cluster."""
    submission_id = submission_id or f"journey-{module}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    cmd = [_ray_cli(), "job", "submit", "--address", address,
           "--submission-id", submission_id, "--working-dir", str(working_dir),
           "--runtime-env-json", json.dumps(env)]
    if not wait:
        cmd.append("--no-wait")
    return cmd + ["--", "python", "-m", f"ray_jobs.{module}", *args]


def submit_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of ``ray job submit``: token auth on when a token is given."""
    env = dict(os.environ if environ is None else environ)
    if env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH"):
        env.setdefault("RAY_AUTH_MODE", "token")
    return env


def run_submit(cmd: list[str], env: dict[str, str], retry_s: float = 180.0) -> int:
    """Run ``cmd``, streaming its output; retry while the head's job agent is not up yet. Returns the exit code."""
    deadline = time.monotonic() + retry_s
    while True:
        tail: deque[str] = deque(maxlen=50)
        with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout:
                sys.stdout.write(line)
                tail.append(line)
        output = "".join(tail)
        if proc.returncode == 0 or AGENT_NOT_READY not in output or time.monotonic() > deadline:
            break
        print("journey: the cluster's job agent is not ready yet; retrying in 5 s", file=sys.stderr)
        time.sleep(5)
    if proc.returncode != 0 and "AuthenticationError" in output:
        print("journey: the cluster wants its auth token: set RAY_AUTH_TOKEN (compose: .env; k8s: the "
              "journey-secrets Secret, see docs/deployment.md)", file=sys.stderr)
    return proc.returncode


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="journey submit", description=__doc__.splitlines()[0],
                                     epilog=f"stages: {', '.join(stage_names())}")
    parser.add_argument("stage", help="run (the whole journey), a stage (listed below) or its ray_jobs module")
    parser.add_argument("--config", default=None, help="preset name or YAML path (relative to the working dir)")
    parser.add_argument("--address", default=None, help=f"Ray dashboard URL (default $RAY_ADDRESS or {DEFAULT_ADDRESS})")
    parser.add_argument("--no-wait", action="store_true", help="return after submitting; follow with `ray job logs -f ID`")
    parser.add_argument("--working-dir", default=str(ROOT), help="folder uploaded as the job's code (default: this checkout)")
    parser.add_argument("--runtime-env-json", default=None, help='merged over ours, e.g. \'{"pip": ["rich"]}\'')
    parser.add_argument("--submission-id", default=None, help="job id (default journey-<module>-<time>-<hex>)")
    parser.add_argument("--dry-run", action="store_true", help="print the ray job submit command, run nothing")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts, rest = parse_args(list(sys.argv[1:] if argv is None else argv))
    working_dir = Path(opts.working_dir).resolve()
    try:
        module = resolve_stage(opts.stage, working_dir)
        check_config(module, opts.config, working_dir)
        env = runtime_env(opts.runtime_env_json)
    except ValueError as exc:
        print(f"journey: error: {exc}", file=sys.stderr)
        return 2
    args = (["--config", opts.config] if opts.config else []) + rest
    address = opts.address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    cmd = submit_command(module, args, address=address, working_dir=working_dir, env=env, wait=not opts.no_wait,
                         submission_id=opts.submission_id)
    if opts.dry_run:
        print(shlex.join(cmd))
        return 0
    return run_submit(cmd, submit_env())


__all__ = ["entry_points", "stage_names", "resolve_stage", "check_config", "runtime_env", "submit_command",
           "submit_env", "run_submit", "main"]


if __name__ == "__main__":
    sys.exit(main())
