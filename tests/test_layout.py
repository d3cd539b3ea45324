"""The package layout and the public API: what imports what, and what the API promises.

The rules (README, "Development"): ``common`` imports nothing of orgaseg outside itself;
``qupath`` imports ``common``; the step families ``data``, ``segmentation``, ``objects`` and
``classification`` import ``common`` and ``qupath``, never each other, except that
``segmentation`` (its shape agreement) and ``classification`` measure organoids with
``objects``, which imports neither; ``pipelines`` may import
all of them; only the top-level interfaces (``steps``, ``cli``, ``album_support``) sit above.
Album solutions and the CLI's step commands go through ``orgaseg_core.steps`` only.
"""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orgaseg_core import steps

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "orgaseg_core"

#: subpackage -> the subpackages (besides itself) its modules may import
ALLOWED = {
    "common": set(),
    "qupath": {"common"},
    "data": {"common", "qupath"},
    "segmentation": {"common", "qupath", "objects"},
    "objects": {"common", "qupath"},
    "classification": {"common", "qupath", "objects"},
    "results": {"common", "qupath"},
    "pipelines": {"common", "qupath", "data", "segmentation", "objects", "classification", "results"},
}
TOP_LEVEL = {"__init__", "__main__", "steps", "cli", "album_support"}
STEPS = ["demo_data", "sort_crops", "annotations_to_masks", "preprocess", "split",
         "train_segmentation", "segment", "evaluate_segmentation", "extract_objects",
         "train_classifier", "classify", "analyze", "example"]
FRAMEWORKS = ("tensorflow", "torch", "stardist", "csbdeep", "keras", "torchvision")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def orgaseg_imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of orgaseg in ``path``, also inside functions;
    ``from X import name`` counts as an import of ``X.name`` (a module or a name in X)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "orgaseg_core"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "orgaseg_core":
                found += [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return found


def _subpackage(module: str) -> str:
    """``orgaseg_core.data.masks.x`` -> ``data``; ``orgaseg_core.steps`` -> ``steps``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def package_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_lives_in_a_subpackage_or_is_a_top_level_interface():
    loose = [p.stem for p in PACKAGE.glob("*.py") if p.stem not in TOP_LEVEL]
    assert loose == [], f"modules outside the subpackages: {loose}"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(ALLOWED)


def test_imports_only_go_down():
    wrong = []
    for path in package_modules():
        here = _subpackage(_module_name(path))
        if here in TOP_LEVEL:
            continue
        for line, module in orgaseg_imports(path):
            there = _subpackage(module)
            if there != here and there not in ALLOWED[here]:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert wrong == [], "imports against the layer rules:\n" + "\n".join(wrong)


def test_the_import_checker_sees_relative_and_function_level_imports(tmp_path):
    # the rule test above is only as good as this parser: check it on a known module
    found = dict(orgaseg_imports(PACKAGE / "pipelines" / "chunks.py"))
    modules = set(found.values())
    assert "orgaseg_core.pipelines.step_server.run_warm_step" in modules
    assert any(m.startswith("orgaseg_core.objects.extract.") for m in modules)  # inside a function
    assert any(m.startswith("orgaseg_core.common.") for m in modules)


def test_frameworks_are_imported_only_by_their_subpackages():
    # torch also drives the U-Net segmentation backend (its own subpackage) and the torch
    # helpers both torch users share; TensorFlow stays with StarDist
    owners = {"tensorflow": {"segmentation"}, "stardist": {"segmentation"}, "csbdeep": {"segmentation"},
              "torch": {"classification", "segmentation.unet", "common.torch_io"},
              "torchvision": {"classification"}}
    wrong = []
    for path in package_modules():
        module = _module_name(path)
        here = _subpackage(module)
        owned = {here} | {o for o in ("segmentation.unet", "common.torch_io")
                          if module.startswith(f"orgaseg_core.{o}")}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                if top in owners and not owned & owners[top]:
                    wrong.append(f"{path.relative_to(REPO)}:{node.lineno} imports {name}")
    assert wrong == [], "\n".join(wrong)


def test_importing_the_api_and_the_cli_loads_neither_tensorflow_nor_torch():
    code = ("import sys, orgaseg_core.steps, orgaseg_core.cli, orgaseg_core.album_support; "
            f"print([m for m in {FRAMEWORKS!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_api_has_one_documented_function_per_step():
    assert steps.__all__ == STEPS
    for name in STEPS:
        function = getattr(steps, name)
        assert inspect.isfunction(function) and function.__module__ == "orgaseg_core.steps", name
        doc = inspect.getdoc(function) or ""
        assert len(doc.splitlines()) >= 3 and "Returns" in doc, f"{name}: docstring says too little"


def _cli_options(command) -> dict[str, object]:
    """parameter name -> default of a typer command function."""
    import typer

    result = {}
    for name, parameter in inspect.signature(command).parameters.items():
        default = parameter.default
        if isinstance(default, typer.models.OptionInfo):
            default = default.default
        result[name] = default
    return result


def _comparable(value):
    """A default as the command line writes it and as Python does, made comparable:
    ``"760x1008"`` and ``(760, 1008)``; ``"1e-3,3e-4"`` and ``(0.001, 0.0003)``; ``"resnet18"``
    and ``("resnet18",)``; ``Path("x")`` and ``"x"``."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        if all(isinstance(v, str) for v in value):
            return ",".join(value)
        return tuple(float(v) for v in value)
    if isinstance(value, str):
        match = re.fullmatch(r"(\d+)x(\d+)", value)
        if match:
            return (float(match[1]), float(match[2]))
        try:
            return tuple(float(v) for v in value.split(","))
        except ValueError:
            return value
    return value


@pytest.mark.parametrize("step", STEPS)
def test_api_parameters_are_the_command_line_options(step):
    """Same names, and the same defaults where the command line has one."""
    from orgaseg_core import cli

    command = {c.callback.__name__: c.callback for c in cli.app.registered_commands}[f"{step}_cmd"]
    options = _cli_options(command)
    api = {n: p.default for n, p in inspect.signature(getattr(steps, step)).parameters.items()}
    extra = {"evaluate_segmentation": {"thresholds", "min_fraction", "max_overlay_side"}}.get(step, set())
    assert set(api) - extra == set(options), (step, set(api) ^ set(options))
    for name, default in options.items():
        if default is ...:  # required on the command line: required here too
            assert api[name] is inspect.Parameter.empty, (step, name)
            continue
        if default is None and api[name] is inspect.Parameter.empty:
            continue  # optional there; here a positional parameter that may be None
        assert _comparable(api[name]) == _comparable(default), (step, name, api[name], default)


@pytest.mark.parametrize("step", STEPS)
def test_api_defaults_are_the_implementation_defaults(step):
    """The API repeats each default of the function it calls (so that its signature documents
    it); they must not drift apart."""
    import importlib

    implementation = {
        "demo_data": ("data.demo", "make_demo_data"), "sort_crops": ("data.sort_crops", "sort_crops"),
        "annotations_to_masks": ("data.masks", "annotations_to_masks"),
        "preprocess": ("data.preprocess", "preprocess"), "split": ("data.split", "split_dataset"),
        "train_segmentation": ("segmentation.train", "train_segmentation"),
        "segment": ("segmentation.predict", "segment"),
        "evaluate_segmentation": ("segmentation.evaluation", "evaluate_segmentation"),
        "extract_objects": ("objects.extract", "extract_objects"),
        "train_classifier": ("classification.train", "train_classifier"),
        "classify": ("classification.predict", "classify"),
        "analyze": ("pipelines.analyze", "analyze"), "example": ("pipelines.example", "run_example"),
    }[step]
    module = importlib.import_module(f"orgaseg_core.{implementation[0]}")
    inner = inspect.signature(getattr(module, implementation[1])).parameters
    outer = inspect.signature(getattr(steps, step)).parameters
    compared = 0
    for name, parameter in inner.items():
        if parameter.default is inspect.Parameter.empty or name not in outer:
            continue
        mine, theirs = outer[name].default, parameter.default
        if isinstance(theirs, (tuple, list)):
            mine, theirs = tuple(mine), tuple(theirs)
        assert mine == theirs, (step, name, mine, theirs)
        compared += 1
    if step == "train_segmentation":
        assert (outer["norm_low"].default, outer["norm_high"].default) == inner["norm_percentiles"].default
    assert compared >= 1


def test_solutions_and_cli_steps_use_only_the_public_api():
    public = {"orgaseg_core.steps", "orgaseg_core.album_support"}
    wrong = []
    for path in sorted((REPO / "solutions").glob("*/solution.py")):
        for line, module in orgaseg_imports(path):
            if module.rpartition(".")[0] not in public and module not in public \
                    and module != "orgaseg_core.steps":
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    # the CLI parses options and calls steps; besides the API it uses the foundations (errors,
    # logging, option parsing), the QuPath option parsers (object types, plane) and, for the
    # model viewer classifier-info, the classifier's loader
    allowed_cli = ("orgaseg_core.steps", "orgaseg_core.__version__", "orgaseg_core.common.",
                   "orgaseg_core.qupath.geojson.parse_",
                   "orgaseg_core.classification.model.load_classifier")
    for line, module in orgaseg_imports(PACKAGE / "cli.py"):
        if not module.startswith(allowed_cli):
            wrong.append(f"orgaseg_core/cli.py:{line} imports {module}")
    assert wrong == [], "\n".join(wrong)


def test_the_package_version_has_one_value():
    """pyproject.toml (what pip installs) and ``orgaseg_core.__version__`` (what run.json and
    ``orgaseg --version`` say) name the same release."""
    import orgaseg_core

    match = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    assert match and match[1] == orgaseg_core.__version__
