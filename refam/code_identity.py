"""The code and the libraries that made a number, computed, never bumped by hand (refam.identity
keys inputs and weights; this module the rest of what a stored number depends on):

- `code_identity`: the code a stage runs: the sha256 of the source of every refam module the
  stage's components are defined in and of every refam module those import, transitively (read
  from the source's import statements, lazy imports included); a component class defined outside
  refam adds its own source file. Editing a segmenter changes the results' identity and not the
  maps'; editing an extractor changes both.
- `library_versions`: the installed versions of the libraries that change numbers (torch and its
  CUDA/cuDNN, diffusers, transformers, ..., sam2, spaCy and the spaCy pipeline in use).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import inspect
import os
import platform
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from refam.identity import digest, file_digest

# ------------------------------------------------------------------ code
PACKAGE = "refam"
PACKAGE_ROOT = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def _module_files() -> dict[str, Path]:
    """refam's modules by dotted name (a package by its `__init__.py`)."""
    files = {}
    for path in PACKAGE_ROOT.rglob("*.py"):
        rel = path.relative_to(PACKAGE_ROOT)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        parts = rel.with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join((PACKAGE, *parts))] = path
    return files


def _imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The refam modules `name`'s source imports, anywhere in it (lazy imports in functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(dotted: str) -> None:
        while dotted and dotted not in modules:  # `from refam.x import function`: the module is refam.x
            dotted = dotted.rpartition(".")[0]
        if dotted:
            found.add(dotted)

    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                add(f"{base}.{alias.name}")
    found.discard(name)
    return found


@functools.lru_cache(maxsize=1)
def _import_graph() -> dict[str, tuple[str, frozenset[str]]]:
    """Each refam module's source sha256 and the refam modules it imports."""
    modules = _module_files()
    return {name: (hashlib.sha256(path.read_bytes()).hexdigest(), frozenset(_imported_modules(name, path, modules)))
            for name, path in modules.items()}


def module_closure(roots: Iterable[str]) -> dict[str, str]:
    """Every refam module reachable from `roots` through imports, with its source's sha256."""
    graph = _import_graph()
    seen: dict[str, str] = {}
    stack = [r for r in roots if r in graph]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        source, imports = graph[name]
        seen[name] = source
        stack.extend(imports - seen.keys())
    return dict(sorted(seen.items()))


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    """Top-level module name -> the installed distributions that provide it."""
    return importlib.metadata.packages_distributions()


def _is_library(path: str) -> bool:
    """A module installed with Python or pip (its version is in `library_versions`), not user code."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    real = os.path.realpath(path)
    return "site-packages" in real or "dist-packages" in real or any(
        real.startswith(os.path.join(p, "lib")) for p in prefixes)


def _held(components: Iterable[object], follow: Callable[[object], bool]) -> Iterator[object]:
    """Each of `components` and, through the public attributes of those `follow` accepts (lists and
    tuples opened), each object they hold: every object once, at most 3 deep."""
    seen: set[int] = set()
    stack = [(component, 0) for component in components]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, tuple)):
            stack.extend((item, depth) for item in value)
            continue
        if value is None or isinstance(value, (str, bytes, int, float, bool)) or id(value) in seen or depth > 3:
            continue
        seen.add(id(value))
        yield value
        if follow(value) and hasattr(value, "__dict__"):
            stack.extend((item, depth + 1) for name, item in vars(value).items() if not name.startswith("_"))


def _ours(value: object) -> bool:
    return (type(value).__module__ or "").split(".")[0] == PACKAGE


def component_modules(*components: object) -> tuple[set[str], dict[str, str]]:
    """(refam modules, {outside source file: sha256}) defining the classes of `components` and of
    the components they hold in public settings (a trajectory, a parser, a list of spatial biases),
    through their class hierarchies. A class defined outside refam and outside any installed
    library (a user's subclass) is keyed by its source file's content; one from an installed
    package (a plugin) by that package's version; the standard library's by Python's own."""
    refam_modules: set[str] = set()
    outside: dict[str, str] = {}

    def defined(value: object) -> bool:  # records where the classes live; follows what refam or a user defined
        known = False
        for cls in type(value).__mro__:
            module = cls.__module__ or ""
            if module.split(".")[0] == PACKAGE:
                refam_modules.add(module)
                known = True
            elif module not in ("builtins", "abc"):
                try:
                    source = inspect.getsourcefile(cls)
                except (TypeError, OSError):  # a built-in class, or one typed at a prompt: no file to key
                    source = None
                if not source or not os.path.isfile(source):
                    continue
                if not _is_library(source):  # a user's class: keyed by its own file, and followed
                    outside[os.path.realpath(source)] = file_digest(source)
                    known = True
                else:  # an installed package (a plugin): keyed by its version, an upgrade being new code
                    for distribution in _distributions().get(module.split(".")[0], []):
                        outside[f"{distribution}=={_version(distribution)}"] = "installed"
        return known

    for _ in _held(components, defined):
        pass
    return refam_modules, dict(sorted(outside.items()))


def code_identity(*components: object, modules: Iterable[str] = ()) -> str:
    """The sha256 of the code a stage runs: the source of `modules` and of the modules defining
    `components` (see `component_modules`), with every refam module they import, transitively."""
    roots, outside = component_modules(*components)
    return digest({"refam": module_closure({*roots, *modules}), "outside": outside})


# ------------------------------------------------------------------ libraries
# Distributions whose versions change a token map (maps) and, with those, a result (results).
MAPS_LIBRARIES = ("torch", "diffusers", "transformers", "tokenizers", "sentencepiece", "safetensors",
                  "accelerate", "numpy", "pillow", "einops")
RESULTS_LIBRARIES = (*MAPS_LIBRARIES, "sam2", "pycocotools", "opencv-python-headless", "opencv-python", "scipy",
                     "scikit-image", "torchvision", "spacy", "torchmetrics")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions(distributions: Iterable[str], spacy_models: Iterable[str] = ()) -> dict[str, str | None]:
    """Python's version, the installed version of each distribution (None: not installed), torch's
    CUDA and cuDNN builds, and the version of each named spaCy pipeline (a package of that name)."""
    versions = {"python": platform.python_version(), **{name: _version(name) for name in distributions}}
    if "torch" in versions:
        import torch

        versions["torch.cuda"] = torch.version.cuda
        versions["torch.cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None
    for model in sorted(set(spacy_models)):
        versions[f"spacy-model:{model}"] = _version(model) or _version(model.replace("_", "-"))
    return versions


def spacy_models(*components: object) -> list[str]:
    """The spaCy pipelines the components' parsers name (their `spacy_model` setting), searched in
    the components and the objects they hold."""
    return [value.spacy_model for value in _held(components, _ours)
            if _ours(value) and isinstance(getattr(value, "spacy_model", None), str)]


# The sources are read when this module is first imported, with the package, not when a run first
# asks: a file edited while a model loads must not lend its hash to numbers the loaded code made.
_import_graph()
