"""The import graph of the code and the layering rules it must keep (docs/architecture.md, Layers).

Reads every ``.py`` file with ``ast`` and collects *every* import: module level, inside functions,
under ``TYPE_CHECKING``. An in-function import still couples two modules, so it counts here exactly
like a top-level one: hiding an edge inside a function does not make it go away.

Nodes are the packages of ``shared/`` (``shared.engine``, ``shared.data`` including its
subpackages, ...) and its top-level modules (``shared.cluster``, ``shared.stages``), plus the
entry-point layers ``ray_jobs`` and ``services``.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ENTRY_LAYERS = ("ray_jobs", "services")

#: The layers of shared/, bottom first (docs/architecture.md, Layers): a package may import packages of
#: its own layer or of a layer before it, never one after it. Every package of shared/ is in exactly one.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundations", ("shared.config", "shared.cluster", "shared.chat_format", "shared.registry", "shared.progress")),
    ("formats", ("shared.data", "shared.tokenizer", "shared.model")),
    ("engine", ("shared.engine",)),
    ("runtimes", ("shared.quant", "shared.serving", "shared.tools", "shared.bus", "shared.rag")),
    ("stage drivers", ("shared.quantize", "shared.eval", "shared.interp", "shared.training")),
    ("chat turn", ("shared.chat",)),
    ("planning", ("shared.plan",)),
    ("stage table", ("shared.stages",)),
    ("report", ("shared.report",)),
)

#: (importer prefix, forbidden prefixes, why): a module under the importer may not import any of them.
FORBIDDEN: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("shared", ENTRY_LAYERS, "the library never imports its entry points or services"),
    ("shared.engine", ("shared.quant", "shared.eval", "shared.registry", "shared.rag", "shared.serving"),
     "the engine is a generation engine only; opening saved models is shared.serving's job"),
    ("shared.training", ("shared.serving",), "training never goes through the serving layer"),
)


@dataclass(frozen=True)
class Edge:
    importer: str  # dotted module that imports
    imported: str  # dotted module (or name) it imports
    where: str  # file:line


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(root: Path, path: Path) -> list[Edge]:
    """Every import in ``path`` (any depth), as absolute dotted names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    me = module_name(root, path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    edges = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            edges += [Edge(me, alias.name, where) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from shared import engine`` imports shared.engine: record the names as submodules too
            edges += [Edge(me, f"{target}.{alias.name}", where) for alias in node.names]
    return edges


def collect(root: Path, top: tuple[str, ...] = ("shared", *ENTRY_LAYERS)) -> list[Edge]:
    edges: list[Edge] = []
    for name in top:
        for path in sorted((root / name).rglob("*.py")):
            edges += imports_of(root, path)
    return edges


def node_of(module: str) -> str | None:
    """The layering node a dotted module belongs to, or None for third-party code."""
    parts = module.split(".")
    if parts[0] in ENTRY_LAYERS:
        return parts[0]
    if parts[0] == "shared" and len(parts) >= 2:
        return f"shared.{parts[1]}"
    return None


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def forbidden_edges(edges: list[Edge]) -> list[str]:
    """One line per import that breaks a rule of ``FORBIDDEN``."""
    out = []
    for e in edges:
        for importer, banned, why in FORBIDDEN:
            if _under(e.importer, importer) and any(_under(e.imported, b) for b in banned):
                out.append(f"{e.where}: {e.importer} imports {e.imported} ({why})")
    return out


def layer_of(node: str) -> int | None:
    return next((i for i, (_, packages) in enumerate(LAYERS) if node in packages), None)


def upward_edges(edges: list[Edge]) -> list[str]:
    """One line per package-level import that points to a later layer of ``LAYERS``."""
    out = []
    for a, targets in package_graph(edges).items():
        for b, where in targets.items():
            la, lb = layer_of(a), layer_of(b)
            if la is not None and lb is not None and lb > la:
                out.append(f"{where[0]}: {a} ({LAYERS[la][0]}) imports {b} ({LAYERS[lb][0]}), a later layer")
    return out


def package_graph(edges: list[Edge]) -> dict[str, dict[str, list[str]]]:
    """``{node: {imported node: [where, ...]}}`` between the packages of shared/ (self-edges dropped)."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for e in edges:
        a, b = node_of(e.importer), node_of(e.imported)
        if a and b and a != b and a.startswith("shared.") and b.startswith("shared."):
            graph[a][b].append(e.where)
    return graph


def package_cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected groups of more than one package (Tarjan), each sorted."""
    graph = package_graph(edges)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in list(graph):
        if v not in index:
            visit(v)
    return groups


def explain_cycle(edges: list[Edge], group: list[str]) -> str:
    """The edges inside one cycle group, each with the first place that makes it."""
    graph = package_graph(edges)
    lines = [f"{a} -> {b} ({graph[a][b][0]})" for a in group for b in graph.get(a, {}) if b in group]
    return "; ".join(lines)
