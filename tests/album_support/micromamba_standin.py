#!/usr/bin/env python3
"""A stand-in for micromamba that implements only the calls album 1.0.0 makes.

album builds every solution environment with micromamba and conda-forge; neither is reachable
where the tests run. This script answers the calls of
``album/environments/controller/micromamba_manager.py`` and ``package_manager.py``:

* ``info --json``                        -> JSON with ``base environment`` / ``env location``
* ``list --json --prefix P``             -> JSON list of the packages importable in P
* ``create -y --file ENV.yml -p P``      -> a venv at P (see below)
* ``run --prefix P CMD...``              -> CMD with P/bin first on PATH (exec, exit code passed on)
* ``remove -y -q -p P --all``            -> deletes P

``create`` makes ``python -m venv --without-pip`` at P and writes a ``.pth`` file that appends
the site-packages of the *parent* Python (the venv that runs this script, i.e. the test venv, or
``ORGASEG_STANDIN_PARENT``: a Python prefix) to ``sys.path``: numpy, scikit-image, album's
runner API, pip ... are then importable without downloads. The ``.pth`` holds plain paths, so the
parent's ``.pth`` files are NOT processed: an editable install of orgaseg-core in the parent is
not importable in P, and P really uses the wheel installed below.

Then the conda and pip entries of the environment file are installed:

* conda entries: ``channel::`` stripped, ``name=1.2`` -> ``name==1.2.*``; ``python`` and ``pip`` are
  skipped (P's Python is the parent's; a different major.minor is reported on stderr).
* entries already satisfied by what P can import are skipped (no pip call, no network).
* ``orgaseg-core...`` entries are installed with ``--no-deps --ignore-installed`` (their
  dependencies are the parent's):

  - a pin (``orgaseg-core[data]==0.8.0``: a source ``environment.yml``) from the wheel built from
    the checkout in ``$ORGASEG_WHEELHOUSE`` (``--no-index --find-links``);
  - a git reference (``orgaseg-core[data] @ git+<catalog URL>@<release tag>``: what a release
    deploys) really from that repository and tag: pip clones it and builds the wheel
    (``--no-build-isolation``: setuptools is the parent's, no index needed), once per commit,
    kept in ``$ORGASEG_WHEELHOUSE/git-<commit>/``. A tag that the repository does not have fails
    here as it would for a user.
* anything else still missing is installed with pip (needs an index).

Usage: album runs it as ``ENVIRONMENT_DEBUGGING_MICROMAMBA_PATH``, which must be an executable
file; tests/integration/conftest.py writes a two-line shell wrapper that calls this script with
the test venv's Python. Only for tests: it is not a package manager.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import NoReturn

STANDIN_VERSION = "2.5.0-orgaseg-standin"
WHEELHOUSE_ENV = "ORGASEG_WHEELHOUSE"
PARENT_ENV = "ORGASEG_STANDIN_PARENT"
PTH_NAME = "_micromamba_standin_parent.pth"
# distributions built from the checkout and installed from the wheelhouse
LOCAL_DISTRIBUTIONS = {"orgaseg-core"}


def _fail(message: str, code: int = 1) -> NoReturn:
    print(f"micromamba-standin: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _option(args: list[str], *names: str) -> str | None:
    """The value after the first of ``names`` in ``args`` (``-p P`` or ``--prefix=P``)."""
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _env_python(prefix: Path) -> Path:
    return prefix / "bin" / "python"


def _env_site_packages(prefix: Path) -> Path:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return prefix / "lib" / version / "site-packages"


def _parent_site_packages() -> list[str]:
    """site-packages folders of the parent Python whose packages the new environments see."""
    parent = os.environ.get(PARENT_ENV)
    if parent:
        paths = sysconfig.get_paths(vars={"base": parent, "platbase": parent})
    else:
        paths = sysconfig.get_paths()
    return sorted({paths["purelib"], paths["platlib"]})


# --- info / list -----------------------------------------------------------------------------

def cmd_info(args: list[str]) -> int:
    base = sys.prefix
    print(json.dumps({
        "micromamba version": STANDIN_VERSION,
        "environment": "base (active)",
        "env location": base,
        "base environment": base,
        "channels": ["conda-forge"],
        "platform": sysconfig.get_platform(),
    }, indent=2))
    return 0


_LIST_SCRIPT = (
    "import json, importlib.metadata as m\n"
    "seen = {}\n"
    "for d in m.distributions():\n"
    "    n = d.metadata['Name']\n"
    "    if n and n.lower() not in seen:\n"
    "        seen[n.lower()] = {'name': n, 'version': d.version, 'channel': 'pypi',"
    " 'build_string': 'pypi_0', 'base_url': 'https://pypi.org/'}\n"
    "print(json.dumps(sorted(seen.values(), key=lambda e: e['name'].lower())))\n"
)


def cmd_list(args: list[str]) -> int:
    prefix = _option(args, "--prefix", "-p")
    if prefix is None:
        _fail("list needs --prefix")
    python = _env_python(Path(prefix))
    if not python.exists():
        _fail(f"{prefix} is not an environment (no bin/python)")
    packages = json.loads(subprocess.check_output([str(python), "-c", _LIST_SCRIPT], text=True))
    version = subprocess.check_output(
        [str(python), "-c", "import platform; print(platform.python_version())"], text=True).strip()
    packages.insert(0, {"name": "python", "version": version, "channel": "conda-forge",
                        "build_string": "standin", "base_url": "https://conda.anaconda.org/conda-forge"})
    print(json.dumps(packages))
    return 0


# --- create ----------------------------------------------------------------------------------

def conda_to_pip(spec: str) -> str | None:
    """Turn a conda match spec into a pip requirement; None for python/pip (not installed here).

    ``conda-forge::album-solution-api=0.7.3`` -> ``album-solution-api==0.7.3.*``;
    ``numpy >=1.24`` -> ``numpy>=1.24``; ``scipy 1.10.*`` -> ``scipy==1.10.*``.
    conda's ``=1.2`` is fuzzy (1.2, 1.2.0, 1.2.5), so it becomes pip's ``==1.2.*``.
    """
    spec = spec.strip().split("::")[-1].strip()
    match = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", spec)
    if not match:
        _fail(f"cannot read the conda dependency {spec!r}")
    name, version = match.group(1), match.group(2).strip()
    if _canonical(name) in ("python", "pip"):
        return None
    version = version.split()[0] if version else ""  # drop a build string
    if not version:
        return name
    if re.match(r"^[<>!~]", version) or version.startswith("=="):
        return f"{name}{version}"
    if version.startswith("="):  # conda's fuzzy "=1.2" matches 1.2, 1.2.0, 1.2.5 ...
        version = version[1:]
        return f"{name}=={version}" if "*" in version else f"{name}=={version}.*"
    return f"{name}=={version}"


def requested_python(dependencies: list) -> str | None:
    for dep in dependencies:
        if isinstance(dep, str):
            spec = dep.strip().split("::")[-1]
            match = re.match(r"^python\s*=*\s*([0-9][0-9.]*)", spec)
            if match:
                return match.group(1)
    return None


def requirements_from_env_file(content: dict) -> list[str]:
    requirements: list[str] = []
    for dep in content.get("dependencies") or []:
        if isinstance(dep, str):
            requirement = conda_to_pip(dep)
            if requirement:
                requirements.append(requirement)
        elif isinstance(dep, dict):
            requirements.extend(str(r) for r in dep.get("pip") or [])
        else:
            _fail(f"cannot read the dependency {dep!r}")
    return requirements


def _is_local(requirement: str) -> bool:
    from packaging.requirements import Requirement

    return _canonical(Requirement(requirement).name) in LOCAL_DISTRIBUTIONS


def _missing(python: Path, requirements: list[str]) -> list[str]:
    """The requirements that the environment's Python cannot satisfy yet (name and version)."""
    if not requirements:
        return []
    script = (
        "import json, sys, importlib.metadata as m\n"
        "from packaging.requirements import Requirement\n"
        "missing = []\n"
        "for text in json.loads(sys.argv[1]):\n"
        "    r = Requirement(text)\n"
        "    try:\n"
        "        version = m.version(r.name)\n"
        "    except m.PackageNotFoundError:\n"
        "        missing.append(text); continue\n"
        "    if not r.specifier.contains(version, prereleases=True):\n"
        "        missing.append(text)\n"
        "print(json.dumps(missing))\n"
    )
    out = subprocess.check_output([str(python), "-c", script, json.dumps(requirements)], text=True)
    return json.loads(out)


def _git_wheel(python: Path, requirement: str, wheelhouse: Path) -> Path:
    """The wheel of a ``name @ git+URL@REV`` requirement, built by pip from that repository and
    revision, once per commit (``wheelhouse/git-<commit>/``)."""
    from packaging.requirements import Requirement

    url = Requirement(requirement).url
    if not url.startswith("git+") or "@" not in url.split("://", 1)[-1].split("/", 1)[-1]:
        _fail(f"{requirement}: expected 'orgaseg-core[...] @ git+<repository URL>@<tag>'")
    repository, revision = url[len("git+"):].rsplit("@", 1)
    listed = subprocess.run(["git", "ls-remote", repository, revision], capture_output=True, text=True)
    commits = {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
    if listed.returncode != 0 or not commits:
        _fail(f"{requirement}: git finds no {revision!r} in {repository} "
              f"({listed.stderr.strip() or 'no such tag'})")
    folder = wheelhouse / f"git-{sorted(commits)[0][:12]}"
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        building = folder.with_name(folder.name + f".building-{os.getpid()}")
        command = [str(python), "-m", "pip", "wheel", "--disable-pip-version-check", "-q", "--no-deps",
                   "--no-build-isolation", "-w", str(building), requirement]
        print("micromamba-standin: " + " ".join(command), flush=True)
        if subprocess.run(command).returncode != 0:
            _fail(f"pip could not build {requirement}")
        try:
            building.rename(folder)
        except OSError:  # built at the same time by another environment: use that one
            shutil.rmtree(building, ignore_errors=True)
        wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        _fail(f"{folder}: expected one wheel, found {len(wheels)}")
    return wheels[0]


def _pip(python: Path, *args: str) -> None:
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check",
               "--no-warn-script-location", *args]
    print("micromamba-standin: " + " ".join(command), flush=True)
    result = subprocess.run(command)
    if result.returncode != 0:
        _fail(f"pip failed ({result.returncode}): {' '.join(args)}")


def cmd_create(args: list[str]) -> int:
    import yaml

    env_file = _option(args, "--file", "-f")
    prefix = _option(args, "--prefix", "-p")
    if env_file is None or prefix is None:
        _fail("create needs --file ENV.yml and -p PREFIX")
    prefix_path = Path(prefix)
    content = yaml.safe_load(Path(env_file).read_text(encoding="utf-8")) or {}

    wanted = requested_python(content.get("dependencies") or [])
    have = f"{sys.version_info.major}.{sys.version_info.minor}"
    if wanted and not (wanted + ".").startswith(have + "."):
        print(f"micromamba-standin: warning: the environment asks for python={wanted}; "
              f"using this Python {have}", file=sys.stderr)

    if prefix_path.exists():
        shutil.rmtree(prefix_path)
    print(f"micromamba-standin: creating {prefix_path} from {env_file}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix_path)], check=True)
    site_packages = _env_site_packages(prefix_path)
    site_packages.mkdir(parents=True, exist_ok=True)
    (site_packages / PTH_NAME).write_text("\n".join(_parent_site_packages()) + "\n", encoding="utf-8")
    python = _env_python(prefix_path)
    # album lists pip packages with <prefix>/bin/pip; pip itself comes from the parent
    pip_shim = prefix_path / "bin" / "pip"
    pip_shim.write_text(f"#!{python}\nimport sys\nfrom pip._internal.cli.main import main\n"
                        "sys.exit(main())\n", encoding="utf-8")
    pip_shim.chmod(0o755)

    requirements = requirements_from_env_file(content)
    local = [r for r in requirements if _is_local(r)]
    others = _missing(python, [r for r in requirements if not _is_local(r)])
    if others:
        _pip(python, *others)
    if local:
        wheelhouse = os.environ.get(WHEELHOUSE_ENV)
        if not wheelhouse or not Path(wheelhouse).is_dir():
            _fail(f"{', '.join(local)}: set {WHEELHOUSE_ENV} to a folder holding its wheel "
                  "(pip wheel --no-deps -w FOLDER <checkout>)")
        from packaging.requirements import Requirement

        pinned = [r for r in local if not Requirement(r).url]
        if pinned:
            _pip(python, "--no-index", "--find-links", wheelhouse, "--no-deps", "--ignore-installed", *pinned)
        for requirement in (r for r in local if Requirement(r).url):
            wheel = _git_wheel(python, requirement, Path(wheelhouse))
            _pip(python, "--no-index", "--no-deps", "--ignore-installed", str(wheel))
    print(f"micromamba-standin: environment {prefix_path} ready "
          f"({len(requirements)} requirements, {len(others)} installed from the index, "
          f"{len(local)} from the wheelhouse)", flush=True)
    return 0


# --- run / remove ----------------------------------------------------------------------------

def cmd_run(args: list[str]) -> int:
    # layout: run --prefix P CMD...   (album never passes other options)
    if len(args) < 3 or args[0] not in ("--prefix", "-p"):
        _fail(f"run expects --prefix P CMD..., got {args!r}")
    prefix = Path(args[1])
    command = args[2:]
    if not _env_python(prefix).exists():
        _fail(f"{prefix} is not an environment (no bin/python)")
    env = dict(os.environ)
    env["PATH"] = str(prefix / "bin") + os.pathsep + env.get("PATH", "")
    env["CONDA_PREFIX"] = str(prefix)
    env.pop("PYTHONHOME", None)
    sys.stdout.flush()
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        _fail(f"command not found: {command[0]}", 127)
    return 0  # not reached


def cmd_remove(args: list[str]) -> int:
    prefix = _option(args, "--prefix", "-p")
    if prefix is None or "--all" not in args:
        _fail("remove supports only: remove -y -q -p PREFIX --all")
    if Path(prefix).resolve() == Path(sys.prefix).resolve():
        _fail("refusing to remove the parent environment")
    shutil.rmtree(prefix, ignore_errors=True)
    return 0


COMMANDS = {"info": cmd_info, "list": cmd_list, "create": cmd_create, "run": cmd_run,
            "remove": cmd_remove}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        _fail(f"unsupported call: micromamba {' '.join(argv)} (supported: {', '.join(COMMANDS)})", 2)
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
