"""The orgaseg-core package a released environment installs (issue 14, item 5).

Fast (not marked): the wheel built from the checkout installs into a fresh venv without its
dependencies and imports with this version, its ``orgaseg`` command and every extra of
pyproject.toml in its metadata (the GPU extras with TensorFlow's CUDA build, the CPU ones
with ``tensorflow-cpu``).

Slow (``-m slow``, needs PyPI and a few GB): every extra installed for real into a fresh venv,
then its frameworks imported, each in its own process (TensorFlow and torch never in one).
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]

# what each extra must make importable (one process per entry: TensorFlow and torch apart)
IMPORTS = {
    "data": [["orgaseg_core.steps", "skimage", "tifffile", "pandas"]],
    "evaluation": [["matplotlib"]],
    "segmentation": [["stardist", "tensorflow", "sklearn", "skops"], ["torch"]],
    "segmentation-gpu": [["stardist", "tensorflow", "sklearn", "skops"], ["torch"]],
    "classification": [["torch", "torchvision", "sklearn", "skops"]],
    "distributed": [["distributed"]],
    "cluster": [["distributed", "dask_jobqueue"]],
    "analysis": [["stardist", "tensorflow"], ["torch", "torchvision", "distributed"]],
    "analysis-gpu": [["stardist", "tensorflow"], ["torch", "torchvision", "distributed"]],
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel --no-deps`` of the checkout."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q",
                    "--no-deps", "-w", str(out), str(REPO)], check=True)
    (built,) = out.glob("orgaseg_core-*.whl")
    return built


def _python(prefix: Path) -> Path:
    return prefix / ("Scripts" if sys.platform == "win32" else "bin") / "python"


def test_the_wheel_installs_and_imports_with_this_version_and_its_extras(wheel, tmp_path):
    assert wheel.name.startswith(f"orgaseg_core-{PROJECT['version']}-py3-none-any")
    fresh = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=False).create(fresh)  # pip: this venv's, via --python
    subprocess.run([sys.executable, "-m", "pip", "--python", str(_python(fresh)), "install",
                    "--disable-pip-version-check", "-q", "--no-deps", str(wheel)], check=True)
    script = (
        "import json, importlib.metadata as m, orgaseg_core\n"
        "d = m.distribution('orgaseg-core')\n"
        "print(json.dumps({'version': orgaseg_core.__version__, 'file': orgaseg_core.__file__,\n"
        "    'dist': d.version, 'extras': d.metadata.get_all('Provides-Extra'),\n"
        "    'requires': d.requires, 'scripts': [e.name for e in d.entry_points]}))\n")
    found = json.loads(subprocess.run([str(_python(fresh)), "-c", script], check=True,
                                      capture_output=True, text=True, cwd=tmp_path).stdout)
    assert found["version"] == found["dist"] == PROJECT["version"]
    assert Path(found["file"]).resolve().is_relative_to(fresh.resolve())  # the wheel, not the checkout
    assert "orgaseg" in found["scripts"]
    declared = set(PROJECT["optional-dependencies"])
    assert declared <= set(found["extras"]) and {"segmentation-gpu", "analysis-gpu"} <= declared
    # the GPU extras: TensorFlow's CUDA build at the CPU build's version, never both
    requires = [Requirement(r) for r in found["requires"]]

    def of(extra: str) -> dict[str, Requirement]:
        return {r.name: r for r in requires if r.marker and r.marker.evaluate({"extra": extra})}

    cpu, gpu = of("segmentation"), of("segmentation-gpu")
    assert "tensorflow" not in cpu and "tensorflow-cpu" not in gpu
    assert gpu["tensorflow"].extras == {"and-cuda"}
    assert gpu["tensorflow"].specifier == cpu["tensorflow-cpu"].specifier
    assert set(gpu) - {"tensorflow"} == set(cpu) - {"tensorflow-cpu"}
    analysis_gpu = of("analysis-gpu")["orgaseg-core"]
    assert analysis_gpu.extras == {"segmentation-gpu", "classification", "distributed"}


@pytest.mark.slow
@pytest.mark.parametrize("extra", sorted(PROJECT["optional-dependencies"].keys() - {"dev"}))
def test_every_extra_installs_for_real(wheel, tmp_path, extra):
    """pip installs ``orgaseg-core[<extra>]`` with all its dependencies (from PyPI) into a fresh
    venv, as a released environment does after cloning the tag; its frameworks then import.
    (The CUDA extras download the CUDA TensorFlow and NVIDIA's wheels; they import without a GPU.)"""
    fresh = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=True).create(fresh)
    subprocess.run([str(_python(fresh)), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                    f"{wheel}[{extra}]" if extra != "data" else str(wheel)], check=True)
    for modules in IMPORTS.get(extra, [["orgaseg_core"]]):
        subprocess.run([str(_python(fresh)), "-c", "import " + ", ".join(modules)], check=True,
                       cwd=tmp_path)
    subprocess.run([str(_python(fresh)), "-m", "orgaseg_core", "--help"], check=True,
                   capture_output=True, cwd=tmp_path)
