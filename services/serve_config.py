"""Check a Ray Serve config file for the serving graph before anything is deployed.

    python -m services.serve_config services/serve_config.yaml                  # the file itself
    python -m services.serve_config services/serve_config.yaml --runs-dir runs  # + its artifacts exist

``validate_serve_config(path_or_dict, runs_dir=None) -> list[str]`` returns every problem found
(empty: deployable), each naming the offending key and the fix:

- the file is what ``serve deploy`` accepts (``ray.serve.schema.ServeDeploySchema``), and it has no
  key Serve does not know: Serve ignores a misspelt ``num_replica`` silently, which here is an error;
- every application that imports ``services.app:build_app`` names only deployments that
  ``services.app`` builds, and its ``args`` are ``StackConfig`` fields that construct one;
- with ``runs_dir`` (where the runs volume is visible to the caller; it replaces ``args.runs_dir``):
  the ``run``, ``model`` and ``index`` the args name exist there, and so does an index when
  ``rag: true`` requires one.

It does not start Ray or import the model: compose runs it before ``serve deploy`` and the tests run
it on every Serve config in the repository (services/serve_config.yaml, the RayService's copy).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

APP_IMPORT_PATH = "services.app:build_app"


def _load(path_or_dict: str | Path | dict) -> tuple[dict | None, str, list[str]]:
    """(config, where, problems) from a file path, a YAML string's path or a dict."""
    if isinstance(path_or_dict, dict):
        return path_or_dict, "serve config", []
    path = Path(path_or_dict)
    if not path.is_file():
        return None, str(path), [f"{path}: no such file; pass the Serve config, e.g. services/serve_config.yaml"]
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        return None, str(path), [f"{path}: not valid YAML ({exc}); fix the syntax"]
    if not isinstance(cfg, dict):
        return None, str(path), [f"{path}: a Serve config is a mapping with `applications:`, got {type(cfg).__name__}"]
    return cfg, str(path), []


def _unknown_keys(cfg: dict) -> list[str]:
    """Keys the Serve schemas do not define, at every level we write (Serve would drop them silently)."""
    from ray.serve import schema as s
    problems = []

    def check(node: Any, model, where: str) -> None:
        if isinstance(node, dict):
            for key in sorted(set(node) - set(model.model_fields)):
                problems.append(f"{where}: unknown key {key!r}; Serve knows {sorted(model.model_fields)}")

    check(cfg, s.ServeDeploySchema, "top level")
    check(cfg.get("http_options"), s.HTTPOptionsSchema, "http_options")
    for i, app in enumerate(cfg.get("applications") or []):
        name = app.get("name", f"#{i}") if isinstance(app, dict) else f"#{i}"
        check(app, s.ServeApplicationSchema, f"application {name}")
        for dep in (app.get("deployments") or []) if isinstance(app, dict) else []:
            if isinstance(dep, dict):
                where = f"application {name}, deployment {dep.get('name')}"
                check(dep, s.DeploymentSchema, where)
                check(dep.get("ray_actor_options"), s.RayActorOptionsSchema, f"{where}, ray_actor_options")
    return problems


def _schema_problems(cfg: dict) -> list[str]:
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema
    try:
        ServeDeploySchema.model_validate(cfg)
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    return []


def known_deployments() -> set[str]:
    """Names of the deployments ``services.app`` wires (the Serve config may tune only these)."""
    from ray import serve

    from services import app
    return {v.name for v in vars(app).values() if isinstance(v, serve.Deployment)}


def _app_problems(app: dict, runs_dir: str | Path | None) -> list[str]:
    from services.app import StackConfig
    name = app.get("name", "?")
    problems = []
    known = known_deployments()
    for dep in app.get("deployments") or []:
        if dep.get("name") not in known:
            problems.append(f"application {name}: unknown deployment {dep.get('name')!r}; services.app builds "
                            f"{sorted(known)} (names are the classes in services/*/deployment.py)")
    args = app.get("args") or {}
    allowed = {f.name for f in fields(StackConfig)}
    unknown = sorted(set(args) - allowed)
    if unknown:
        problems.append(f"application {name}: unknown args {unknown}; args are StackConfig fields {sorted(allowed)}")
        return problems
    try:
        StackConfig(**args)
    except (TypeError, ValueError) as exc:
        problems.append(f"application {name}: bad args: {exc}")
        return problems
    if runs_dir is not None:
        problems += _artifact_problems(name, args, Path(runs_dir))
    return problems


def _artifact_problems(name: str, args: dict, runs_dir: Path) -> list[str]:
    """The run, model and index the args name must exist under ``runs_dir`` (the runs volume)."""
    from services.retriever.deployment import find_index
    from shared.registry import ArtifactNotFound, Registry
    if not runs_dir.is_dir():
        return [f"application {name}: runs_dir {runs_dir} does not exist; pass the folder the runs volume is at"]
    registry, run, problems = Registry(runs_dir), args.get("run"), []
    if run and run not in registry.runs():
        problems.append(f"application {name}: run {run!r} has no artifacts under {runs_dir}; runs there: "
                        f"{registry.runs() or 'none'}. Train it first (journey submit run run={run}) or fix `run`")
    if args.get("model"):
        try:
            registry.resolve(args["model"], run)
        except ArtifactNotFound as exc:
            problems.append(f"application {name}: model: {exc}")
    if args.get("index") or str(args.get("rag", "auto")).lower() == "true":
        try:
            find_index(registry, args.get("index"), run)
        except LookupError as exc:
            problems.append(f"application {name}: index: {exc}")
    return problems


def validate_serve_config(path_or_dict: str | Path | dict, runs_dir: str | Path | None = None) -> list[str]:
    """Every problem of a Serve config for the serving graph (see the module docstring); [] when none."""
    cfg, where, problems = _load(path_or_dict)
    if cfg is None:
        return problems
    problems = _unknown_keys(cfg) + _schema_problems(cfg)
    apps = [a for a in cfg.get("applications") or [] if isinstance(a, dict)]
    if not apps:
        problems.append("no applications: add one with import_path: services.app:build_app")
    for app in apps:
        if app.get("import_path") != APP_IMPORT_PATH:
            problems.append(f"application {app.get('name', '?')}: import_path {app.get('import_path')!r} is not the "
                            f"serving graph; use {APP_IMPORT_PATH}")
            continue
        problems += _app_problems(app, runs_dir)
    return [f"{where}: {p}" for p in problems]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.serve_config", description=__doc__.splitlines()[0])
    parser.add_argument("file", help="the Serve config YAML (services/serve_config.yaml)")
    parser.add_argument("--runs-dir", default=None, help="also check that the named run/model/index exist here")
    args = parser.parse_args(argv)
    problems = validate_serve_config(args.file, args.runs_dir)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.file}: ok ({', '.join(sorted(known_deployments()))})")
    return 1 if problems else 0


__all__ = ["APP_IMPORT_PATH", "known_deployments", "validate_serve_config", "main"]


if __name__ == "__main__":
    sys.exit(main())
