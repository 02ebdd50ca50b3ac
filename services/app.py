"""The serving graph, wired once: gateway -> generator, retriever; tool executor on the bus.

    serve run services.app:build_app model=tiny6/dpo           # ad hoc (args as key=value)
    serve deploy services/serve_config.yaml                     # what compose and k8s (RayService) run
    journey up                                                  # Redis + Ray + this app + the web chat

``build_app(args)`` is Serve's application builder: ``args`` is the Serve config's ``args`` (or the
``key=value`` pairs of ``serve run``), validated by ``StackConfig``. Replica counts, resources and
autoscaling live in the Serve config file, not here (docs/architecture.md, Picture).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields

from ray.serve import Application

from services.gateway.deployment import Gateway, GatewayConfig
from services.generator.deployment import Generator
from services.retriever.deployment import Retriever, find_index
from services.tools.deployment import ToolExecutor
from shared.registry import Registry

log = logging.getLogger("ray.serve")


@dataclass
class StackConfig:
    """What the serving graph serves (the Serve config's ``args``)."""
    model: str | None = None          # artifact to serve by default; None: the run's final model
    run: str | None = None            # run whose final model and index are served; None: the newest
    runs_dir: str | None = None       # artifact root; None: $JOURNEY_RUNS or ./runs
    redis_url: str | None = None      # None: $REDIS_URL or redis://localhost:6379/0
    rag: str = "auto"                 # auto: retrieval when the run has an index; true: require one; false: off
    index: str | None = None          # index artifact; None: the run's newest
    qdrant_url: str | None = None     # Qdrant server; None: local mode in the index artifact
    gateway: dict = field(default_factory=dict)  # GatewayConfig fields

    def __post_init__(self):
        if self.rag not in ("auto", "true", "false", True, False):
            raise ValueError(f"rag must be auto, true or false, got {self.rag!r}")
        self.rag = str(self.rag).lower()
        GatewayConfig(**self.gateway)  # unknown keys fail here, at deploy time, not in a replica


def _use_rag(cfg: StackConfig) -> bool:
    if cfg.rag == "false":
        return False
    try:
        find_index(Registry(cfg.runs_dir), cfg.index, cfg.run)
        return True
    except LookupError:
        if cfg.rag == "true":
            raise
        log.warning("no index artifact found: serving without retrieval (build one with `journey index`)")
        return False


def build_app(args: dict) -> Application:
    known = {f.name for f in fields(StackConfig)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown serving arg(s) {unknown}; known: {sorted(known)}")
    cfg = StackConfig(**args)
    generator = Generator.bind(model=cfg.model, run=cfg.run, runs_dir=cfg.runs_dir, redis_url=cfg.redis_url)
    retriever = (Retriever.bind(index=cfg.index, run=cfg.run, runs_dir=cfg.runs_dir, qdrant_url=cfg.qdrant_url)
                 if _use_rag(cfg) else None)
    tools = ToolExecutor.bind(redis_url=cfg.redis_url, retriever=retriever)
    gateway = {**cfg.gateway, "redis_url": cfg.gateway.get("redis_url", cfg.redis_url)}
    return Gateway.bind(generator, retriever, tools, config=gateway)


__all__ = ["StackConfig", "build_app"]
