"""The layering rules of docs/architecture.md hold for the code, and the checker catches each kind of break."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.layering import LAYERS, collect, explain_cycle, forbidden_edges, node_of, package_cycles, upward_edges

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def edges():
    return collect(ROOT)


def test_no_import_cycle_between_the_packages_of_shared(edges):
    cycles = package_cycles(edges)
    assert not cycles, "\n".join(explain_cycle(edges, group) for group in cycles)


def test_no_import_goes_against_the_layers(edges):
    broken = forbidden_edges(edges)
    assert not broken, "\n".join(broken)


def test_every_package_of_shared_has_a_layer_and_imports_only_its_own_or_lower_layers(edges):
    packages = {node_of(f"shared.{p.stem if p.suffix == '.py' else p.name}") for p in (ROOT / "shared").iterdir()
                if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    placed = [pkg for _, layer in LAYERS for pkg in layer]
    assert sorted(placed) == sorted(packages), "place every package of shared/ in tests/layering.py LAYERS " \
                                               "and docs/architecture.md, Layers"
    broken = upward_edges(edges)
    assert not broken, "\n".join(broken)


def test_the_checker_sees_every_kind_of_import(edges):
    """In-function, relative and ``from package import module`` imports all count (a check that reads only
    the top of each file would pass code that hides its coupling inside functions)."""
    pairs = {(e.importer, e.imported) for e in edges}
    assert ("ray_jobs.cli", "shared.registry.Registry") in pairs or any(
        e.importer.startswith("ray_jobs") and e.imported.startswith("shared") for e in edges)
    assert any(e.importer.startswith("shared.engine") and e.imported.startswith("shared.model") for e in edges)


def _plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for pkg in ("shared", "ray_jobs", "services"):
        (root / pkg).mkdir(exist_ok=True)
        (root / pkg / "__init__.py").touch()
    return root


def test_a_planted_engine_to_quant_import_inside_a_function_is_caught(tmp_path):
    root = _plant(tmp_path, {
        "shared/engine/__init__.py": "",
        "shared/engine/linear.py": "def f():\n    from shared.quant import kernels\n    return kernels\n",
        "shared/quant/__init__.py": "",
        "shared/quant/kernels.py": "X = 1\n",
    })
    broken = forbidden_edges(collect(root))
    assert len(broken) == 1 and "shared/engine/linear.py:2" in broken[0] and "shared.quant" in broken[0]


def test_a_planted_import_of_a_later_layer_is_caught(tmp_path):
    root = _plant(tmp_path, {
        "shared/data/__init__.py": "",
        "shared/data/x.py": "import shared.training.runner\n",
        "shared/training/__init__.py": "",
        "shared/training/runner.py": "",
    })
    broken = upward_edges(collect(root))
    assert len(broken) == 1 and "shared.data (formats) imports shared.training (stage drivers)" in broken[0]


def test_a_planted_cycle_and_a_library_to_entry_point_import_are_caught(tmp_path):
    root = _plant(tmp_path, {
        "shared/a/__init__.py": "from shared.b import thing\n",
        "shared/b/__init__.py": "from ..a import other\nthing = 1\n",  # relative import closes the cycle
        "shared/c.py": "import services.stack\n",
        "services/stack.py": "",
    })
    edges = collect(root)
    assert package_cycles(edges) == [["shared.a", "shared.b"]]
    assert any("shared.c imports services.stack" in line for line in forbidden_edges(edges))
