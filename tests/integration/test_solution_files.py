"""Fast checks of the album solution files and the catalog (no album CLI, not marked integration).

* every ``solutions/<step>/solution.py`` loads with album's own loader and schema while
  ``orgaseg_core`` cannot be imported (album reads it before the environment exists);
* every argument has a type album knows, a real description, a default unless it is required,
  and a snake_case name (``album run-distributed`` expands only those) that is the ``orgaseg``
  CLI option of the step with ``_`` for ``-``; every step offers the CLI's options;
* album's argument parser turns "False" into False for every boolean argument;
* every ``environment.yml`` is a conda environment that pins orgaseg-core to this version;
* the committed catalog files equal a fresh ``catalog/build_catalog.py`` build.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "album_support" / "micromamba_standin.py"


def load_build_catalog(root: Path = REPO):
    """``catalog/build_catalog.py`` as a module (it is a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("orgaseg_build_catalog",
                                                  root / "catalog" / "build_catalog.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DATA_STEPS = {"demo-data", "sort-crops", "annotations-to-masks", "preprocess", "split"}
#: CLI options a solution does not offer (yet): analyze's Dask options come with their own release
NOT_IN_SOLUTIONS = {"analyze": {"workers", "scheduler", "chunk-size", "threads-per-worker"}}
#: steps that may load a U-Net (torch) or StarDist (TensorFlow): the environment has both
BOTH_FRAMEWORKS = {"train-segmentation", "segment", "analyze"}
ALBUM_TYPES = {"string", "file", "directory", "integer", "float", "boolean"}
DEFAULT_TYPES = {"string": str, "integer": int, "float": (int, float), "boolean": bool}
PACKAGE_VERSION = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
SOLUTION_FOLDERS = load_build_catalog(REPO).source_solution_folders(REPO)

# Runs in a fresh Python: load every solution with album's loader (exec + schema validation)
# while importing orgaseg_core fails, then parse boolean arguments with album's runner parser.
LOADER = r"""
import json, sys, tempfile

class NoOrgasegCore:
    def find_spec(self, name, path=None, target=None):
        if name == "orgaseg_core" or name.startswith("orgaseg_core."):
            raise ImportError("orgaseg_core imported while album loads the solution")
        return None

sys.meta_path.insert(0, NoOrgasegCore())
from album.core.controller.album_controller import AlbumController
from album.core.utils.operations.solution_operations import get_deploy_dict
from album.runner.core.model.solution_script import SolutionScript

result = {}
with tempfile.TemporaryDirectory() as home:
    controller = AlbumController(home)
    for path in sys.argv[1:]:
        solution = controller.state_manager().load(path)
        setup = get_deploy_dict(solution)
        setup["dependencies"] = solution.setup().dependencies
        setup["routines"] = sorted(k for k in ("run", "pre_test", "test", "install")
                                   if callable(solution.setup().get(k)))
        parser = SolutionScript.build_parser(solution, enforce_required=False)
        parsed = {}
        for arg in solution.setup().args:
            if arg.get("type") == "boolean":
                values = {}
                for text in ("False", "false", "0", "True", "yes"):
                    values[text] = getattr(parser.parse_args(["--" + arg["name"], text]),
                                           arg["name"].replace("-", "_"))
                values["<default>"] = getattr(parser.parse_args([]), arg["name"].replace("-", "_"))
                try:
                    parser.parse_args(["--" + arg["name"], "maybe"])
                    values["maybe"] = "accepted"
                except SystemExit as exc:
                    values["maybe"] = "exit %s" % exc.code
                parsed[arg["name"]] = values
        setup["parsed_booleans"] = parsed
        result[path] = setup
    controller.close()
print("LOADED " + json.dumps(result))
"""


@pytest.fixture(scope="module")
def loaded() -> dict[str, dict]:
    """folder name -> the solution's setup as album loaded it (plus parsed boolean values)."""
    paths = [str(folder / "solution.py") for folder in SOLUTION_FOLDERS]
    proc = subprocess.run([sys.executable, "-c", LOADER, *paths], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(l for l in proc.stdout.splitlines() if l.startswith("LOADED "))
    data = json.loads(line[len("LOADED "):])
    return {Path(path).parent.name: setup for path, setup in data.items()}


def cli_options(step: str) -> set[str]:
    """Long option names of ``orgaseg <step>`` (without the dashes)."""
    import typer.main

    from orgaseg_core.cli import app

    command = typer.main.get_command(app).commands[step]
    return {opt[2:] for param in command.params for opt in param.opts if opt.startswith("--")}


def test_every_data_step_has_a_solution():
    assert DATA_STEPS <= {folder.name for folder in SOLUTION_FOLDERS}
    for folder in SOLUTION_FOLDERS:
        for name in ("solution.py", "environment.yml", "README.md", "CHANGELOG.md"):
            assert (folder / name).is_file(), f"{folder / name} is missing"


@pytest.mark.parametrize("folder", SOLUTION_FOLDERS, ids=lambda f: f.name)
def test_no_module_level_orgaseg_core_import(folder):
    """album executes solution.py in its own Python, where orgaseg_core is not installed."""
    tree = ast.parse((folder / "solution.py").read_text(encoding="utf-8"))
    todo = list(tree.body)
    while todo:  # module level, including inside if/try/with blocks, but not inside functions
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            names = []
        assert not any(n == "orgaseg_core" or n.startswith("orgaseg_core.") for n in names), \
            f"{folder / 'solution.py'}:{node.lineno}: imports orgaseg_core at module level"
        todo.extend(ast.iter_child_nodes(node))


@pytest.mark.parametrize("folder", SOLUTION_FOLDERS, ids=lambda f: f.name)
def test_setup_metadata(folder, loaded):
    setup = loaded[folder.name]
    assert setup["group"] == "orgaseg" and setup["name"] == folder.name
    assert re.fullmatch(r"\d+\.\d+\.\d+", setup["version"])
    assert setup["album_api_version"] == "0.7.3"  # parses str/int/bool types; album 1.0.0's runner
    assert setup["license"] == "MIT"
    assert len(setup["title"]) > 10 and len(setup["description"]) > 150
    assert setup["solution_creators"] and setup["tags"]
    assert any("orgaseg" in cite["text"] for cite in setup["cite"])
    assert setup["documentation"] == ["README.md"]
    assert setup["routines"] == ["pre_test", "run", "test"]
    assert setup["dependencies"] == {"environment_file": "environment.yml"}


@pytest.mark.parametrize("folder", SOLUTION_FOLDERS, ids=lambda f: f.name)
def test_arguments_are_typed_described_and_defaulted(folder, loaded):
    args = loaded[folder.name]["args"]
    for arg in args:
        where = f"{folder.name} --{arg['name']}"
        # snake_case: album-distributed 0.3.0 expands patterns only in arguments whose names
        # equal argparse's dest (model_out), never in hyphenated ones (model-out)
        assert re.fullmatch(r"[a-z][a-z0-9_]*", arg["name"]), where
        assert arg.get("type") in ALBUM_TYPES, where
        # a sentence for a biologist: what it is, and units or an example
        assert len(arg.get("description", "")) >= 40 and arg["description"][0].isupper(), where
        if arg.get("required"):
            assert "default" not in arg, f"{where}: required and a default"
        else:
            assert "default" in arg, f"{where}: optional without a default"
            if arg["default"] is None:
                assert arg["type"] in ("file", "directory"), f"{where}: only paths may default to none"
            else:
                assert isinstance(arg["default"], DEFAULT_TYPES[arg["type"]]), where
                if arg["type"] != "boolean":
                    assert not isinstance(arg["default"], bool), where
    outputs = [a for a in args if a["name"] in ("out", "model_out")]
    assert len(outputs) == 1 and outputs[0].get("required") is True, where
    # the command line's options, spelled with "_" for "-" (the CLI keeps its hyphens)
    names = {a["name"].replace("_", "-") for a in args}
    assert names <= cli_options(folder.name), names - cli_options(folder.name)
    assert cli_options(folder.name) - names <= NOT_IN_SOLUTIONS.get(folder.name, set()), \
        f"{folder.name}: the solution lacks {cli_options(folder.name) - names}"


@pytest.mark.parametrize("folder", SOLUTION_FOLDERS, ids=lambda f: f.name)
def test_boolean_arguments_really_parse(folder, loaded):
    """The original scripts took "--flag False" for True; album's parser must not."""
    parsed = loaded[folder.name]["parsed_booleans"]
    defaults = {a["name"]: a["default"] for a in loaded[folder.name]["args"] if a["type"] == "boolean"}
    assert set(parsed) == set(defaults) and "overwrite" in parsed
    assert defaults["overwrite"] is False  # earlier results are protected unless asked
    for name, values in parsed.items():
        assert values["False"] is False and values["false"] is False and values["0"] is False, name
        assert values["True"] is True and values["yes"] is True, name
        assert isinstance(defaults[name], bool) and values["<default>"] is defaults[name], name
        assert values["maybe"] == "exit 2", name


@pytest.mark.parametrize("folder", SOLUTION_FOLDERS, ids=lambda f: f.name)
def test_environment_file(folder):
    env = yaml.safe_load((folder / "environment.yml").read_text(encoding="utf-8"))
    assert env["name"] == f"orgaseg-{folder.name}"
    assert env["channels"] == ["conda-forge"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert "pip" in conda and any(re.fullmatch(r"python\s*=+\s*3\.\d+", d) for d in conda)
    assert len(pip_lists) == 1
    core = [Requirement(r) for r in pip_lists[0] if Requirement(r).name == "orgaseg-core"]
    assert len(core) == 1, "orgaseg-core must be installed exactly once, with pip"
    assert str(core[0].specifier) == f"=={PACKAGE_VERSION}", "pin orgaseg-core to this release"
    if folder.name in DATA_STEPS:
        assert core[0].extras == {"data"}
    if folder.name in BOTH_FRAMEWORKS:  # StarDist and the U-Net (never in one process)
        assert core[0].extras == {"analysis"}
    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"]
    assert core[0].extras <= set(extras), f"unknown extra {core[0].extras}"


def test_catalog_files_are_up_to_date():
    """The committed album_catalog_index.db and album_solution_list.json are a fresh build, and no deployed folder is on main."""
    problems = load_build_catalog(REPO).check_catalog(REPO)
    assert not problems, "\n".join(problems) + "\nrun: python catalog/build_catalog.py"


def test_catalog_meta_file():
    meta = json.loads((REPO / "album_catalog_index.json").read_text(encoding="utf-8"))
    assert meta == {"name": "orgaseg", "version": "0.1.0", "type": "direct"}


def test_standin_maps_conda_specs_to_pip():
    spec = importlib.util.spec_from_file_location("micromamba_standin", STANDIN)
    standin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standin)
    assert standin.conda_to_pip("conda-forge::album-solution-api=0.7.3") == "album-solution-api==0.7.3.*"
    assert standin.conda_to_pip("conda-forge::setuptools>=59.7.0") == "setuptools>=59.7.0"
    assert standin.conda_to_pip("numpy 1.26.*") == "numpy==1.26.*"
    assert standin.conda_to_pip("python=3.11") is None and standin.conda_to_pip("pip") is None
    env = {"dependencies": ["python=3.11", "pip", {"pip": ["orgaseg-core[data]==0.1.0"]},
                            "conda-forge::album-solution-api=0.7.3"]}
    assert standin.requirements_from_env_file(env) == ["orgaseg-core[data]==0.1.0",
                                                       "album-solution-api==0.7.3.*"]


def test_errors_name_the_album_arguments():
    """orgaseg's messages name the command line's options; in a solution, the album names."""
    from orgaseg_core.album_support import album_option_names

    names = ["segmentation_model", "masks", "n_tiles", "min_area", "out"]
    assert album_option_names("give --segmentation-model or --masks (--n-tiles 2x2, --min-area=5)",
                              names) == "give --segmentation_model or --masks (--n_tiles 2x2, --min_area=5)"
    # only whole option names, and only the solution's
    assert album_option_names("/data/x--min-area --n-tiles-max --learning-rate", names) == \
        "/data/x--min-area --n-tiles-max --learning-rate"
