"""Checks of the built distributions, run by ``make dist-check``.

    python scripts/check_dist.py contents DIST_DIR
        The wheel and the sdist in DIST_DIR hold every module and every bundled file of the
        source tree, the license, README and metadata (SPDX license expression, version from
        captum_tokenlrp/_version.py), and nothing from virtual environments, outputs, builds or
        tests/ (the suite runs from the repository, not from the sdist).

    python scripts/check_dist.py smoke --venv VENV --out DIR
        Run by VENV's python from a folder outside the repository, after the wheel was
        installed into VENV and ``tokenlrp explain --model bundled --out DIR`` ran there:
        the package imports from VENV's site-packages (not the source tree), its version is
        the installed distribution's, the bundled model and sample load from the installed
        package, their token relevance sums to 1, and the CLI wrote its figure and arrays.

Standard library only for ``contents`` (it also runs where nothing is installed); ``smoke``
imports the installed package.
"""

from __future__ import annotations

import argparse
import ast
import email.parser
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "captum_tokenlrp"
DISTRIBUTION = "captum-tokenlrp"
LICENSE_EXPRESSION = "BSD-3-Clause"
# Named explicitly so that a failure says which one; every other bundled file is checked too.
REQUIRED_PACKAGE_FILES = [
    "bundled/shapes-vit/model.safetensors",
    "bundled/shapes-vit/config.json",
    "bundled/shapes-vit/preprocessor_config.json",
    "bundled/shapes-vit/training.json",
    "bundled/shapes-multilabel-vit/model.safetensors",
    "bundled/shapes-multilabel-vit/config.json",
    "bundled/shapes-multilabel-vit/preprocessor_config.json",
    "bundled/shapes-multilabel-vit/training.json",
    "bundled/sample.png",
    "data/photo_masks.json",
]
# Path components that must never reach a distribution.
FORBIDDEN_PARTS = {".git", ".venv", ".venv-tf4", "outputs", "build", "dist", "site", "__pycache__", ".pytest_cache"}


class CheckError(Exception):
    pass


def source_version() -> str:
    """``__version__`` of ``_version.py``, read without importing the package."""
    tree = ast.parse((ROOT / PACKAGE / "_version.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__version__"]:
            return ast.literal_eval(node.value)
    raise CheckError(f"{PACKAGE}/_version.py assigns no __version__")


def source_package_files() -> set[str]:
    """Every module and every bundled file of the source package, relative to the package."""
    package = ROOT / PACKAGE
    modules = {p for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    bundled = {p for p in (package / "bundled").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    return {p.relative_to(package).as_posix() for p in modules | bundled}


def expect(condition: bool, message: str, problems: list[str]) -> None:
    if not condition:
        problems.append(message)


def check_metadata(text: str, version: str, where: str, problems: list[str]) -> None:
    metadata = email.parser.Parser().parsestr(text)
    expect(metadata["Name"] == DISTRIBUTION, f"{where}: Name is {metadata['Name']!r}", problems)
    expect(
        metadata["Version"] == version, f"{where}: Version {metadata['Version']!r}, _version.py {version!r}", problems
    )
    expect(
        metadata["License-Expression"] == LICENSE_EXPRESSION,
        f"{where}: License-Expression is {metadata['License-Expression']!r}, expected {LICENSE_EXPRESSION!r}",
        problems,
    )
    expect(
        metadata.get_all("License-File") == ["LICENSE"],
        f"{where}: License-File {metadata.get_all('License-File')}",
        problems,
    )
    expect(metadata["License"] is None, f"{where}: the deprecated License field is set", problems)
    classifiers = metadata.get_all("Classifier") or []
    expect(not any(c.startswith("License ::") for c in classifiers), f"{where}: a License classifier is set", problems)
    expect(
        "Token relevance" in (metadata.get_payload() or ""),
        f"{where}: the README is not the long description",
        problems,
    )


def check_no_forbidden(names: list[str], where: str, problems: list[str]) -> None:
    for name in names:
        parts = set(PurePosixPath(name).parts)
        bad = parts & FORBIDDEN_PARTS
        if bad or name.endswith(".pyc"):
            problems.append(f"{where}: {name} should not be there ({', '.join(sorted(bad)) or '.pyc'})")


def check_wheel(path: Path, version: str, package_files: set[str], problems: list[str]) -> None:
    where = path.name
    with zipfile.ZipFile(path) as wheel:
        names = [n for n in wheel.namelist() if not n.endswith("/")]
        dist_info = f"captum_tokenlrp-{version}.dist-info"
        expect(
            path.name.startswith(f"captum_tokenlrp-{version}-py3-none-any"),
            f"{where}: not a pure {version} wheel",
            problems,
        )
        for relative in sorted(set(REQUIRED_PACKAGE_FILES) | package_files):
            expect(f"{PACKAGE}/{relative}" in names, f"{where}: {PACKAGE}/{relative} is missing", problems)
        expect(f"{dist_info}/licenses/LICENSE" in names, f"{where}: {dist_info}/licenses/LICENSE is missing", problems)
        for name in names:
            top = name.split("/", 1)[0]
            expect(top in {PACKAGE, dist_info}, f"{where}: {name} is outside the package and its dist-info", problems)
        check_no_forbidden(names, where, problems)
        if f"{dist_info}/METADATA" in names:
            check_metadata(wheel.read(f"{dist_info}/METADATA").decode("utf-8"), version, where, problems)
        else:
            problems.append(f"{where}: no METADATA")
        if f"{dist_info}/entry_points.txt" in names:
            entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode("utf-8")
            expect("tokenlrp = captum_tokenlrp.cli:main" in entry_points, f"{where}: no tokenlrp script", problems)
        else:
            problems.append(f"{where}: no entry_points.txt (the tokenlrp script)")
        if f"{dist_info}/licenses/LICENSE" in names:
            shipped = wheel.read(f"{dist_info}/licenses/LICENSE").decode("utf-8")
            expect(shipped == (ROOT / "LICENSE").read_text(encoding="utf-8"), f"{where}: LICENSE differs", problems)


def check_sdist(path: Path, version: str, package_files: set[str], problems: list[str]) -> None:
    where = path.name
    top = f"captum_tokenlrp-{version}"
    expect(path.name == f"{top}.tar.gz", f"{where}: expected {top}.tar.gz", problems)
    with tarfile.open(path, "r:gz") as sdist:
        members = [m for m in sdist.getmembers() if m.isfile()]
        names = [m.name for m in members]
        for name in names:
            expect(name.startswith(f"{top}/"), f"{where}: {name} is outside {top}/", problems)
        relative = [name.removeprefix(f"{top}/") for name in names]
        for required in ["LICENSE", "README.md", "pyproject.toml", "PKG-INFO"]:
            expect(required in relative, f"{where}: {required} is missing", problems)
        for file in sorted(set(REQUIRED_PACKAGE_FILES) | package_files):
            expect(f"{PACKAGE}/{file}" in relative, f"{where}: {PACKAGE}/{file} is missing", problems)
        check_no_forbidden(relative, where, problems)
        # The test suite needs the whole repository (README, docs, tutorials, scripts, conftest.py);
        # setuptools would ship only tests/test*.py, a suite that cannot run: MANIFEST.in prunes it.
        stray_tests = [name for name in relative if name.startswith("tests/")]
        expect(not stray_tests, f"{where}: {len(stray_tests)} files of tests/ (MANIFEST.in: prune tests)", problems)
        if "PKG-INFO" in relative:
            check_metadata(sdist.extractfile(f"{top}/PKG-INFO").read().decode("utf-8"), version, where, problems)


def contents(dist_dir: Path) -> None:
    wheels, sdists = sorted(dist_dir.glob("*.whl")), sorted(dist_dir.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        raise CheckError(f"{dist_dir}: expected one wheel and one sdist, found {[p.name for p in dist_dir.iterdir()]}")
    version, package_files = source_version(), source_package_files()
    problems: list[str] = []
    check_wheel(wheels[0], version, package_files, problems)
    check_sdist(sdists[0], version, package_files, problems)
    if problems:
        raise CheckError("\n".join(problems))
    print(
        f"dist contents ok: {wheels[0].name} and {sdists[0].name} hold the {len(package_files)} package files "
        f"(modules and bundled data), LICENSE ({LICENSE_EXPRESSION}) and version {version}"
    )


def smoke(venv: Path, out: Path) -> None:
    import importlib.metadata
    import sysconfig

    import numpy as np

    import captum_tokenlrp
    from captum_tokenlrp import TokenRelevanceLRP
    from captum_tokenlrp.data.shapes import normalize
    from captum_tokenlrp.models import BUNDLED_MODEL_DIR, BUNDLED_SAMPLE, bundled_sample_image, load_bundled_model

    site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
    if Path(sys.prefix).resolve() != venv.resolve():
        raise CheckError(f"running in {sys.prefix}, not in the wheel's environment {venv}")
    for what, path in [
        ("the package", captum_tokenlrp.__file__),
        ("the model", BUNDLED_MODEL_DIR),
        ("the sample", BUNDLED_SAMPLE),
    ]:
        if site_packages not in Path(path).resolve().parents:
            raise CheckError(f"{what} comes from {path}, not from the wheel installed in {site_packages}")
    installed = importlib.metadata.version(DISTRIBUTION)
    if captum_tokenlrp.__version__ != installed:
        raise CheckError(f"captum_tokenlrp.__version__ {captum_tokenlrp.__version__!r}, installed {installed!r}")

    model = load_bundled_model()
    image = np.asarray(bundled_sample_image(), dtype=np.float32) / 255.0
    relevance = TokenRelevanceLRP(model).token_relevance(normalize(image[None]))
    if tuple(relevance.shape) != (1, 65):
        raise CheckError(f"token relevance of the bundled sample has shape {tuple(relevance.shape)}, expected (1, 65)")
    total = float(relevance.sum())
    if abs(total - 1.0) > 1e-5 or float(relevance.min()) < 0:
        raise CheckError(f"token relevance sums to {total} (min {float(relevance.min())}), expected 1 and >= 0")

    png, npz = out / "sample.png.png", out / "sample.png.npz"  # outputs are named <input file name>.png / .npz
    for path in (png, npz):
        if not path.is_file() or path.stat().st_size == 0:
            raise CheckError(f"tokenlrp explain did not write {path}")
    if png.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        raise CheckError(f"{png} is not a PNG")
    with np.load(npz) as arrays:
        fused = [key for key in arrays.files if key.startswith("relevance_") and not key.endswith("_per_head")]
        if not fused:
            raise CheckError(f"{npz} holds no fused relevance ({arrays.files})")
        for key in fused:
            if abs(float(arrays[key].sum()) - 1.0) > 1e-5:
                raise CheckError(f"{npz}: {key} sums to {float(arrays[key].sum())}")
    print(
        f"wheel smoke ok: {DISTRIBUTION} {installed} from {site_packages}; bundled sample relevance sums to "
        f"{total:.6f}; the CLI wrote {png.name} and {npz.name} ({len(fused)} rules)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    contents_parser = commands.add_parser("contents", help="check the wheel and sdist in DIST_DIR")
    contents_parser.add_argument("dist_dir", type=Path)
    smoke_parser = commands.add_parser("smoke", help="check the installed wheel (run by its environment's python)")
    smoke_parser.add_argument("--venv", type=Path, required=True, help="the environment the wheel is installed in")
    smoke_parser.add_argument("--out", type=Path, required=True, help="where tokenlrp explain wrote")
    args = parser.parse_args(argv)
    try:
        if args.command == "contents":
            contents(args.dist_dir)
        else:
            smoke(args.venv, args.out)
    except CheckError as error:
        print(f"check_dist {args.command} FAILED:\n{error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
