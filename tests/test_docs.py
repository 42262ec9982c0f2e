"""Documentation that cannot drift: every public name has a docstring, notebooks are stripped."""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = [
    "captum_tokenlrp",
    "captum_tokenlrp.baselines",
    "captum_tokenlrp.evaluation",
    "captum_tokenlrp.data",
    "captum_tokenlrp.visualization",
    "captum_tokenlrp.diagnostics",
    "captum_tokenlrp.images",
    "captum_tokenlrp.report",
    "captum_tokenlrp.models",
    "captum_tokenlrp.text",
]


def public_names(module):
    return getattr(module, "__all__", [name for name in vars(module) if not name.startswith("_")])


def undocumented(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    missing = [] if inspect.getdoc(module) else [module_name]
    for name in public_names(module):
        value = getattr(module, name)
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        if value.__module__.split(".")[0] != "captum_tokenlrp":
            continue
        if not (value.__doc__ or "").strip():
            missing.append(f"{module_name}.{name}")
        if inspect.isclass(value):
            for member, attribute in vars(value).items():
                function = attribute.fget if isinstance(attribute, property) else attribute
                if member.startswith("_") or not callable(function) or member in {"get_name"}:
                    continue
                if not (getattr(function, "__doc__", None) or "").strip():
                    missing.append(f"{module_name}.{name}.{member}")
    return missing


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_has_a_docstring(module_name):
    assert undocumented(module_name) == []


@pytest.mark.parametrize("notebook", sorted((ROOT / "tutorials").glob("*.ipynb")), ids=lambda p: p.name)
def test_tutorials_are_committed_without_outputs(notebook):
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    assert code, "a tutorial without code"
    assert all(not cell["outputs"] and cell["execution_count"] is None for cell in code), (
        "strip outputs with: python scripts/run_tutorials.py --strip"
    )


def test_tutorials_index_lists_every_notebook():
    index = (ROOT / "tutorials" / "README.md").read_text(encoding="utf-8")
    mkdocs = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
        assert f"({notebook.name})" in index and f"tutorials/{notebook.name}" in mkdocs
