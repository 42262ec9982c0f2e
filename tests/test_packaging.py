"""Packaging metadata of the source tree: license, one version, package data that covers the bundled files.

Fast and offline; ``make dist-check`` builds the wheel and sdist and checks what they hold.
"""

from __future__ import annotations

import ast
import glob
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

import captum_tokenlrp

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "captum_tokenlrp"
PYPROJECT_TEXT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def pyproject() -> dict:
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    return tomllib.loads(PYPROJECT_TEXT)


def test_license_file_is_bsd_3_clause():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("BSD 3-Clause License")
    assert "Copyright (c) 2026, captum-tokenlrp developers" in text
    assert "Neither the name of the copyright holder" in text  # the third clause


def test_license_is_an_spdx_expression():
    project = pyproject()["project"]
    assert project["license"] == "BSD-3-Clause"  # a string (PEP 639), not the deprecated table
    assert project["license-files"] == ["LICENSE"]
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))  # PEP 639 forbids both
    # setuptools reads the SPDX string and license-files from 77 on.
    minimum = [re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", r) for r in pyproject()["build-system"]["requires"]]
    assert any(m and int(m.group(1)) >= 77 for m in minimum)


def test_installed_metadata_carries_the_license():
    metadata = importlib.metadata.metadata("captum-tokenlrp")
    assert metadata["License-Expression"] == "BSD-3-Clause"


def _version_module_value() -> str:
    tree = ast.parse((PACKAGE_DIR / "_version.py").read_text(encoding="utf-8"))
    # One plain string assignment: setuptools reads it statically, without importing the package
    # (which would need torch in the isolated build environment).
    assignments = [node for node in tree.body if isinstance(node, ast.Assign)]
    assert len(assignments) == 1 and isinstance(assignments[0].value, ast.Constant)
    assert [t.id for t in assignments[0].targets] == ["__version__"]
    return assignments[0].value.value


def test_version_is_defined_once():
    version = _version_module_value()
    assert captum_tokenlrp.__version__ == version
    assert importlib.metadata.version("captum-tokenlrp") == version, "reinstall: make install"
    config = pyproject()
    assert "version" not in config["project"] and "version" in config["project"]["dynamic"]
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "captum_tokenlrp._version.__version__"}
    assert version not in PYPROJECT_TEXT
    literal = re.compile(rf"""["']{re.escape(version)}["']""")
    elsewhere = [
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE_DIR.rglob("*.py")
        if path.name != "_version.py" and literal.search(path.read_text(encoding="utf-8"))
    ]
    assert elsewhere == []


def test_package_data_covers_every_bundled_file():
    """A file added under bundled/ that no package-data glob matches would be left out of the wheel."""
    globs = pyproject()["tool"]["setuptools"]["package-data"]["captum_tokenlrp"]
    # setuptools expands package-data globs relative to the package directory, as glob.glob does here.
    covered = {
        Path(match).as_posix()
        for pattern in globs
        for match in glob.glob(pattern, root_dir=PACKAGE_DIR, recursive=True)
        if (PACKAGE_DIR / match).is_file()
    }
    bundled = {
        path.relative_to(PACKAGE_DIR).as_posix()
        for path in (PACKAGE_DIR / "bundled").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert {"bundled/sample.png", "bundled/shapes-vit/model.safetensors"} <= bundled
    assert sorted(bundled - covered) == []
