"""The layout's promises: the remote-code bundle is exactly what a saved model ships and imports nothing of the
project; imports flow one way between the top-level packages, and without cycles inside the library; one fact, one
place."""

import ast
import importlib
import json
from pathlib import Path

import pytest

from dataset_scripts.caption_prompts import caption_modalities
from unimedclip.evaluation import load_catalog
from unimedclip.evaluation.evaluator import METRIC_MODULE
from unimedclip.inference.zero_shot import TEMPLATES
from unimedclip.modalities import MODALITIES
from unimedclip.paper import CITATION

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "modeling_unimedclip"
# Top-level packages in the only order imports may flow: each may import those before it, never those after.
PACKAGES = ("modeling_unimedclip", "unimedclip", "dataset_scripts")
SCRIPTS = ("train.py", "finetune.py", "evaluate_zero_shot.py", "demo.py")


def bundle_modules() -> set[str]:
    return {path.name for path in BUNDLE.glob("*.py")} - {"__init__.py"}


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved against `package`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module)
    return names


def package_of(path: Path) -> str:
    """The dotted package a module file belongs to (for resolving its relative imports)."""
    return ".".join(path.relative_to(ROOT).parts[:-1])


def project_modules() -> dict[str, Path]:
    """Every module of the project by dotted name: the packages' modules and the root scripts."""
    modules = {path.stem: ROOT / path for path in map(Path, SCRIPTS)}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            relative = path.relative_to(ROOT).with_suffix("")
            name = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
            modules[name] = path
    return modules


def test_saved_model_ships_exactly_the_bundle(model_dir):
    shipped = {path.name for path in model_dir.glob("*.py")}
    assert shipped == bundle_modules()


def test_bundle_imports_nothing_of_the_project_outside_itself():
    for path in BUNDLE.glob("*.py"):
        for name in imported_modules(path, "modeling_unimedclip"):
            top = name.split(".")[0]
            if top == "modeling_unimedclip":
                # Relative imports of the bundle's own modules are copied along; absolute ones break remote code.
                assert path.name == "__init__.py" or name.split(".")[1] + ".py" in bundle_modules(), (path, name)
                continue
            assert top not in (*PACKAGES, *(Path(script).stem for script in SCRIPTS)), (path, name)


def test_bundle_uses_only_relative_imports_of_itself():
    """`from modeling_unimedclip.x import` works installed, not as remote code, where the folder has another name."""
    for path in BUNDLE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
                names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
                assert not any(name.split(".")[0] == "modeling_unimedclip" for name in names), path


def test_imports_flow_one_way_between_top_level_packages():
    rank = {package: index for index, package in enumerate(PACKAGES)}
    scripts = {Path(script).stem for script in SCRIPTS}
    for name, path in project_modules().items():
        importer = name.split(".")[0]
        for imported in imported_modules(path, package_of(path)):
            top = imported.split(".")[0]
            assert top not in scripts or importer == top, f"{name} imports the script {imported}"
            if importer in rank and top in rank:
                assert rank[top] <= rank[importer], f"{name} ({importer}) imports {imported} ({top})"


def test_no_import_cycle_inside_the_library():
    """Between the library's modules (its sub-packages' `__init__`s included), imports form a DAG."""
    modules = {name: path for name, path in project_modules().items() if name.split(".")[0] in PACKAGES}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_modules(path, package_of(path)):
            parts = imported.split(".")
            # `from .x import y` may name a module `x.y` or an attribute of `x`: take the longest module prefix.
            prefixes = [".".join(parts[:n]) for n in range(len(parts), 0, -1)]
            target = next((prefix for prefix in prefixes if prefix in modules), None)
            if target and target != name:
                targets.add(target)
        graph[name] = targets

    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in graph[node]:
            if state.get(target) == "open":
                cycle = trail[trail.index(target) :] + [target] if target in trail else [node, target]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*trail, target])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_every_library_module_imports():
    for name in project_modules():
        if name.split(".")[0] in PACKAGES:
            importlib.import_module(name)


def test_modalities_mean_one_thing_everywhere():
    assert set(TEMPLATES) == {"generic", *MODALITIES}
    assert set(caption_modalities()) == set(MODALITIES)
    assert {entry["modality"] for entry in load_catalog().values()} <= set(MODALITIES)


def test_the_metric_script_cites_the_paper():
    """`evaluate` loads the metric as a standalone script, so it keeps a copy of the citation: the same one."""
    source = (Path(METRIC_MODULE) / "unimed_zero_shot.py").read_text()
    assert CITATION in source


def test_catalog_entries_are_complete():
    prompts = json.loads((ROOT / "unimedclip/evaluation/prompts/unimed.json").read_text())
    for key, entry in load_catalog().items():
        assert entry["metric"] in ("accuracy", "auc"), key
        assert list(prompts[key]) == entry["classes"], key
