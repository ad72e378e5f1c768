"""refam as a library: pyproject.toml gives compatible ranges (a `pip install refam` into a researcher's
environment keeps the torch that is there), constraints.txt the exact set the suite runs on, and every
third-party package refam imports is declared, the optional ones imported only where they are used."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# import name -> distribution, where the two differ
DISTRIBUTION = {"PIL": "pillow", "cv2": "opencv-python-headless", "yaml": "pyyaml", "skimage": "scikit-image",
                "hydra": "hydra-core", "sklearn": "scikit-learn"}
# Imported but declared nowhere, on purpose: what the package brings is not enough (nltk's WordNet is a
# separate download), so the reader asks for both in one line when they are missing. Each such import
# must sit in a `try` that catches ImportError.
GUARDED = {"nltk"}


def requirements(project: dict) -> dict[str, list[Requirement]]:
    """The project's requirements by group ("" for the core), the extras that only name refam's own
    other extras left out."""
    groups = {"": project["dependencies"], **project.get("optional-dependencies", {})}
    return {group: [Requirement(line) for line in lines if canonicalize_name(Requirement(line).name) != "refam"]
            for group, lines in groups.items()}


def range_problem(requirement: Requirement) -> str | None:
    """Why `requirement` is not a compatible range (a lower and an upper bound, no exact version), or None."""
    operators = {spec.operator for spec in requirement.specifier}
    if operators & {"==", "===", "~="} or any("*" in spec.version for spec in requirement.specifier):
        return f"{requirement}: an exact version, not a range; exact pins belong in constraints.txt"
    if not operators & {">=", ">"}:
        return f"{requirement}: no lower bound (the oldest release tested)"
    if not operators & {"<", "<="}:
        return f"{requirement}: no upper bound (the next major release)"
    return None


def pins(text: str) -> dict[str, Version]:
    """constraints.txt's exact pins by canonical name; any other kind of line is an error."""
    found = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (spec,) = requirement.specifier  # exactly one
        assert spec.operator == "==" and not requirement.extras and not requirement.marker, f"line {number}: {line}"
        found[canonicalize_name(requirement.name)] = Version(spec.version)
    return found


def pin_problems(project: dict, lock: dict[str, Version]) -> list[str]:
    problems = []
    for group, reqs in requirements(project).items():
        for requirement in reqs:
            name = canonicalize_name(requirement.name)
            if name not in lock:
                problems.append(f"{requirement} ({group or 'core'}): not pinned in constraints.txt")
            elif not requirement.specifier.contains(lock[name], prereleases=True):
                problems.append(f"{requirement} ({group or 'core'}): constraints.txt pins {lock[name]}, outside the range")
    return problems


def third_party_imports(package: Path) -> list[tuple[str, str, int, bool, bool]]:
    """(top-level module, file, line, at module level, inside a try that catches ImportError) for every
    import in `package` of something neither in the standard library nor refam. Imports under
    `if TYPE_CHECKING:` are left out: they never run."""
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

        def context(node):
            top_level, guarded = True, False
            while node in parents:
                node = parents[node]
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    top_level = False
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                    return None
                if isinstance(node, ast.Try) and any(
                        handler.type is not None and re.search(r"\b(ImportError|ModuleNotFoundError)\b",
                                                               ast.unparse(handler.type))
                        for handler in node.handlers):
                    guarded = True
            return top_level, guarded

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            where = context(node)
            for module in modules:
                top = module.split(".")[0]
                if where is None or top in sys.stdlib_module_names or top in ("refam", "__future__"):
                    continue
                found.append((top, str(path.relative_to(package.parent)), node.lineno, *where))
    return found


def import_problems(project: dict, imports: list[tuple[str, str, int, bool, bool]]) -> list[str]:
    groups = requirements(project)
    core = {canonicalize_name(r.name) for r in groups[""]}
    extras = {canonicalize_name(r.name): group for group, reqs in groups.items() if group for r in reqs}
    problems = []
    for module, path, line, top_level, guarded in imports:
        name = canonicalize_name(DISTRIBUTION.get(module, module))
        where = f"{path}:{line}: import {module}"
        if name in core:
            continue
        if module in GUARDED:
            if not guarded:
                problems.append(f"{where}: undeclared, so it must sit in a try that catches ImportError")
        elif name not in extras:
            problems.append(f"{where}: {name} is neither a dependency nor in an extra of pyproject.toml")
        elif top_level:
            problems.append(f"{where}: {name} is only in the [{extras[name]}] extra, so import it where it is "
                            "used, not at module level (a core install must import every module)")
    return problems


def install_recipe(makefile: str) -> list[str]:
    """The command lines of the Makefile's install recipe (the rule for $(STAMP))."""
    lines = makefile.split("\n$(STAMP):", 1)[1].split("\n")[1:]
    recipe = []
    for line in lines:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def makefile_problems(makefile: str, project: dict) -> list[str]:
    lock = re.search(r"^LOCK\s*:?=\s*(\S+)\s*$", makefile, re.M)
    if lock is None or lock.group(1) != "constraints.txt":
        return ["the Makefile names no LOCK := constraints.txt"]
    problems = []
    installs = [line for line in install_recipe(makefile) if "pip install" in line]
    for line in installs:
        if not re.search(r"(-c|--constraint)[ =]\$\(LOCK\)", line):
            problems.append(f"install without -c $(LOCK): {line}")
    wanted = set(project.get("optional-dependencies", {})) - {"all"}
    installed = set()
    for line in installs:
        for match in re.finditer(r"\.\[([^\]]*)\]", line):
            installed |= {extra.strip() for extra in match.group(1).split(",")}
    if wanted - installed:
        problems.append(f"make install leaves out the extras {sorted(wanted - installed)} the tests need")
    return problems


# ---------------------------------------------------------------------------------------- the checks


@pytest.mark.parametrize("group", sorted(requirements(PROJECT)), ids=lambda g: g or "core")
def test_every_dependency_is_a_compatible_range(group):
    assert [p for r in requirements(PROJECT)[group] if (p := range_problem(r))] == []


@pytest.mark.parametrize("line, complaint", [
    ("torch==2.14.1", "exact version"),
    ("numpy===2.4.6", "exact version"),
    ("torch~=2.14.1", "exact version"),
    ("torch==2.*", "exact version"),
    ("torch", "no lower bound"),
    ("torch<3", "no lower bound"),
    ("torch>=2.13", "no upper bound"),
    ("jsonargparse[signatures]>=4.53", "no upper bound"),
])
def test_a_pin_or_an_open_end_is_refused(line, complaint):
    assert complaint in range_problem(Requirement(line))


def test_every_pin_lies_inside_its_range_and_every_dependency_is_pinned():
    assert pin_problems(PROJECT, pins((ROOT / "constraints.txt").read_text())) == []


@pytest.mark.parametrize("planted, complaint", [
    ({"torch": "2.12.0"}, "pins 2.12.0, outside the range"),  # below torch>=2.13
    ({"numpy": "3.0.0"}, "pins 3.0.0, outside the range"),
    ({"gradio": None}, "not pinned"),  # an extra's dependency too
    ({"h5py": None}, "not pinned"),
])
def test_a_pin_outside_its_range_or_missing_is_found(planted, complaint):
    lock = pins((ROOT / "constraints.txt").read_text())
    for name, version in planted.items():
        if version is None:
            del lock[name]
        else:
            lock[name] = Version(version)
    assert any(complaint in problem for problem in pin_problems(PROJECT, lock))


@pytest.mark.parametrize("line", ["torch>=2.13", "sam2 @ https://example.org/sam2.tar.gz", "-e .",
                                  "gradio==6.31.0; python_version<'3.12'", "jsonargparse[signatures]==4.53.0"])
def test_the_constraints_file_holds_only_plain_exact_pins(line):
    with pytest.raises(Exception):
        pins(line)


def test_every_third_party_import_is_declared_and_extras_are_imported_lazily():
    imports = third_party_imports(ROOT / "refam")
    assert {module for module, *_ in imports} >= {"torch", "diffusers", "sam2", "gradio", "h5py"}  # the scan sees them
    assert import_problems(PROJECT, imports) == []


@pytest.mark.parametrize("source, complaint", [
    ("import einops\n", "neither a dependency nor in an extra"),
    ("import gradio as gr\n", "only in the [serve] extra"),
    ("from sam2.build_sam import build_sam2\n", "only in the [sam2] extra"),
    ("import h5py\n", "only in the [semseg] extra"),
    ("def f():\n    from nltk.corpus import wordnet\n", "must sit in a try"),
])
def test_an_undeclared_or_eager_import_is_found(tmp_path, source, complaint):
    package = tmp_path / "refam"
    package.mkdir()
    (package / "module.py").write_text(source)
    assert any(complaint in problem for problem in import_problems(PROJECT, third_party_imports(package)))


@pytest.mark.parametrize("source", [
    "def f():\n    import gradio\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sam2.sam2_image_predictor import SAM2ImagePredictor\n",
    "def f():\n    try:\n        from nltk.corpus import wordnet\n    except ImportError:\n        raise\n",
    "import torch\nimport PIL.Image\nfrom refam.errors import error_line\nimport os\n",
])
def test_lazy_typing_only_and_guarded_imports_pass(tmp_path, source):
    package = tmp_path / "refam"
    package.mkdir()
    (package / "module.py").write_text(source)
    assert import_problems(PROJECT, third_party_imports(package)) == []


def test_make_install_uses_the_constraints_file_with_every_extra():
    assert makefile_problems((ROOT / "Makefile").read_text(), PROJECT) == []


@pytest.mark.parametrize("edit, complaint", [
    (lambda m: m.replace("-c $(LOCK) torch", "torch"), "install without -c $(LOCK)"),
    (lambda m: m.replace(",serve", ""), "leaves out the extras ['serve']"),
    (lambda m: m.replace("LOCK    := constraints.txt", "LOCK    := requirements.txt"), "no LOCK"),
])
def test_an_install_without_the_constraints_file_is_found(edit, complaint):
    makefile = (ROOT / "Makefile").read_text()
    edited = edit(makefile)
    assert edited != makefile
    assert any(complaint in problem for problem in makefile_problems(edited, PROJECT))


def test_ci_runs_make_test():
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line.strip() and not line.startswith("#") and not line.startswith("set ") and not line.startswith("cd ")]
    assert lines == ["make test"]


# ------------------------------------------------------------------------------ a real resolution

LOCAL_TORCH = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")


@pytest.mark.slow
@pytest.mark.skipif(not LOCAL_TORCH.is_file() or sys.version_info[:2] != (3, 11),
                    reason="needs this machine's local torch 2.13.0 CPU wheel for Python 3.11")
def test_a_wheel_installed_beside_another_torch_keeps_it(tmp_path):
    """pip's own resolver, asked to install refam's wheel (with its serve and ImageNet extras) into a
    venv that holds torch 2.13.0, installs everything else from the index and leaves that torch alone."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--quiet", "--no-deps", str(LOCAL_TORCH)], check=True, timeout=300)
    source = tmp_path / "source"  # a build writes build/ and *.egg-info next to the sources
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "outputs", "lightning_logs",
                                                                "__pycache__", "*.egg-info", "build", "dist"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("refam-*.whl")
    report = tmp_path / "report.json"
    run = subprocess.run([*pip, "install", "--dry-run", "--quiet", "--report", str(report), f"{wheel}[serve,semseg]"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    chosen = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
              for item in json.loads(report.read_text())["install"]}
    assert "refam" in chosen and "diffusers" in chosen  # it did resolve refam's dependencies
    assert "torch" not in chosen and "torchvision" not in chosen, chosen
