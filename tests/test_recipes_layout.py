"""The ``training/`` recipes: public API only, shared pieces in ``common.py``, no recipe cycles (issue 12, point 6)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TRAINING = Path(__file__).resolve().parents[1] / "training"
RECIPES = sorted(TRAINING.glob("*.py"))


def _private_uses(path: Path) -> list[str]:
    """``from napari_samsp... import _x`` and ``<napari_samsp module>._x`` in one file."""
    tree = ast.parse(path.read_text())
    modules: set[str] = set()  # local names bound to napari_samsp modules
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("napari_samsp"):
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"{node.module}.{alias.name}")
                modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("napari_samsp"):
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def _imported_modules(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
    return out


def test_the_checker_sees_private_uses(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from napari_samsp import metrics\nfrom napari_samsp.finetune.loop import _lr_at\nmetrics._instances(1)\n")
    assert _private_uses(bad) == ["napari_samsp.finetune.loop._lr_at", "metrics._instances"]


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipes_use_only_the_public_api(path):
    assert _private_uses(path) == []


def test_ablation_and_baselines_do_not_import_each_other():
    assert "baselines" not in _imported_modules(TRAINING / "ablation.py")
    assert "ablation" not in _imported_modules(TRAINING / "baselines.py")


def test_the_data_root_is_defined_once():
    defining = [p.name for p in RECIPES if '"SAMSP_DATA"' in p.read_text()]
    assert defining == ["common.py"]


def test_screenshot_and_latency_scripts_live_in_scripts():
    assert not (TRAINING / "make_screenshot.py").exists() and not (TRAINING / "bench_latency.py").exists()
    assert (TRAINING.parent / "scripts" / "make_screenshot.py").is_file()
    assert (TRAINING.parent / "scripts" / "bench_latency.py").is_file()
