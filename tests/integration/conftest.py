"""Fixtures that drive the real ``album`` CLI (album 1.0.0) against this repository as a catalog.

Nothing here reaches the internet:

* ``ALBUM_BASE_CACHE_PATH``: a temporary album home.
* ``ALBUM_DEFAULT_CATALOG``: a local, empty catalog repository (album clones the default
  catalog from gitlab.com at its first start otherwise).
* ``ENVIRONMENT_DEBUGGING_MICROMAMBA_PATH``: a two-line wrapper around
  ``tests/album_support/micromamba_standin.py`` (venvs instead of conda environments).
* ``ORGASEG_WHEELHOUSE``: a folder with the orgaseg-core wheel built from the checkout, which the
  stand-in installs where an environment file pins ``orgaseg-core==<version>`` (a solution
  installed from its source folder). A released solution's environment installs
  ``orgaseg-core[...] @ git+<catalog>@<release tag>``: the stand-in builds that wheel from the
  catalog repository at the tag with pip, once per commit, and keeps it in the wheelhouse too.

The catalog album adds is a throwaway git repository made from a copy of the working tree
(uncommitted changes included), its catalog files rebuilt from ``solutions/<step>/`` with
``catalog/build_catalog.py`` (so the tests run the current solution sources; the unit test
``test_solution_files.py`` checks that the committed catalog files equal such a build), with the
release tags ``orgaseg-<step>-<version>`` that album clones to install a solution: the repository as
it would be released from this state.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "album_support" / "micromamba_standin.py"


def _ignored_names() -> list[str]:
    """Names not copied into the catalog repository: what .gitignore ignores (its patterns applied
    at any depth, which is close enough here), VCS data, virtual environments and caches."""
    names = {".git", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache", "build", "dist", "*.egg-info"}
    gitignore = REPO / ".gitignore"
    if gitignore.is_file():
        for line in gitignore.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "!")):
                names.add(line.strip("/"))
    return sorted(names)


IGNORED = shutil.ignore_patterns(*_ignored_names())
ANSI = re.compile(r"\x1b\[[0-9;]*m")
GIT_IDENTITY = ["-c", "user.name=orgaseg tests", "-c", "user.email=tests@orgaseg.invalid",
                "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"]


def _run(command: list, cwd: Path | None = None, env: dict | None = None) -> str:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} failed ({result.returncode}):\n"
                    f"{result.stdout}\n{result.stderr}")
    return result.stdout


def _git(repo: Path, *args: str) -> str:
    return _run(["git", *GIT_IDENTITY, *args], cwd=repo)


def load_build_catalog(root: Path = REPO):
    """``catalog/build_catalog.py`` of ``root`` as a module (it is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location(f"build_catalog_{abs(hash(str(root)))}",
                                                  root / "catalog" / "build_catalog.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_catalog(catalog_repo: Path) -> list[str]:
    """Rebuild the catalog files of ``catalog_repo`` in place; return the release tags."""
    build_catalog = load_build_catalog(catalog_repo)
    build_catalog.build_catalog(catalog_repo)
    return build_catalog.release_tags(catalog_repo)


# (what, seconds) of the set-up and of every album call, printed at the end of the session
TIMINGS: list[tuple[str, float]] = []


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_sep("-", "album integration timings")
        for what, seconds in TIMINGS:
            terminalreporter.write_line(f"{seconds:6.2f} s  {what}")
        terminalreporter.write_line(f"{sum(s for _, s in TIMINGS):6.2f} s  total")


@dataclass
class AlbumResult:
    returncode: int
    output: str  # stdout and stderr together, as a user sees them, without colour codes
    seconds: float


@dataclass
class Album:
    """Calls the real ``album`` command with the test environment; records the time of each call."""

    executable: Path
    env: dict
    workdir: Path
    catalog_repo: Path
    timings: list = field(default_factory=list)

    def __call__(self, *args, expect: int | None = 0, timeout: float = 300) -> AlbumResult:
        start = time.perf_counter()
        proc = subprocess.run([str(self.executable), *map(str, args)], cwd=self.workdir, env=self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)
        seconds = time.perf_counter() - start
        result = AlbumResult(proc.returncode, ANSI.sub("", proc.stdout), seconds)
        self.timings.append(("album " + " ".join(Path(str(a)).name if "/" in str(a) else str(a)
                                                 for a in args[:2]), seconds))
        if expect is not None and proc.returncode != expect:
            pytest.fail(f"album {' '.join(map(str, args))} exited {proc.returncode}, expected {expect}:\n"
                        f"{result.output}")
        return result

    def installed(self) -> set[str]:
        """catalog:group:name:version of the installed solutions (from ``album index --json``)."""
        out = self("index", "--json").output
        index = json.loads(out[out.index("{"):])
        found = set()
        for catalog in index.get("catalogs", []):
            for solution in catalog.get("solutions", []):
                setup = solution.get("setup", {})
                if solution.get("internal", {}).get("installed"):
                    found.add(f"{catalog['name']}:{setup['group']}:{setup['name']}:{setup['version']}")
        return found


@pytest.fixture(scope="session")
def album(tmp_path_factory) -> Album:
    """The album CLI with a fresh home, this repository added as the catalog ``orgaseg``."""
    executable = Path(sys.executable).with_name("album")
    if not executable.exists():
        pytest.fail(f"{executable} not found: install the dev extra (pip install -e '.[dev]')")
    if shutil.which("git") is None:
        pytest.fail("git is not installed; album needs it to read catalogs")
    base = tmp_path_factory.mktemp("album")
    timings = TIMINGS

    # 1. the repository as it would be released: working tree copy, committed, tagged
    start = time.perf_counter()
    catalog_repo = base / "orgaseg-catalog"
    shutil.copytree(REPO, catalog_repo, ignore=IGNORED, symlinks=True)
    tags = _build_catalog(catalog_repo)
    _git(catalog_repo, "init", "-q", "-b", "main")
    _git(catalog_repo, "add", "-A")
    _git(catalog_repo, "commit", "-q", "-m", "release")
    # the maintainer's release command, so the integration tests exercise it too
    build_catalog = load_build_catalog(catalog_repo)
    # the catalog is added by its path: the released environments install orgaseg-core from it
    created, _ = build_catalog.create_release_tags(catalog_repo, repo_url=str(catalog_repo))
    # the versions in solutions/ are tagged; older versions the index keeps (0.1.0) have no
    # source in this history-less copy, so they stay untagged (and are not installed here)
    current = sorted(build_catalog._source_versions(catalog_repo))
    assert created == current and set(current) <= set(tags)
    timings.append(("catalog repository: copy, build_catalog.py, commit, tags",
                    time.perf_counter() - start))

    # 2. the orgaseg-core wheel of the checkout (built from the copy: no build/ in the checkout)
    start = time.perf_counter()
    wheelhouse = base / "wheelhouse"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
          "-w", wheelhouse, catalog_repo])
    assert list(wheelhouse.glob("orgaseg_core-*.whl")), "no orgaseg-core wheel was built"
    timings.append(("orgaseg-core wheel", time.perf_counter() - start))

    # 3. an empty default catalog, so that album never clones from gitlab.com
    default_catalog = base / "default-catalog"
    default_catalog.mkdir()
    (default_catalog / "album_catalog_index.json").write_text(
        json.dumps({"name": "default", "version": "0.1.0", "type": "direct"}), encoding="utf-8")
    _git(default_catalog, "init", "-q", "-b", "main")
    _git(default_catalog, "add", "-A")
    _git(default_catalog, "commit", "-q", "-m", "empty default catalog")

    # 4. micromamba: the stand-in, run by the Python of this test session
    wrapper = base / "bin" / "micromamba"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)

    workdir = base / "work"
    (base / "tmp").mkdir()
    workdir.mkdir()
    env = dict(os.environ)
    env.update({
        "ALBUM_BASE_CACHE_PATH": str(base / "album-home"),
        "ALBUM_DEFAULT_CATALOG": str(default_catalog),
        "ALBUM_DEFAULT_CATALOG_BRANCH": "main",
        "ENVIRONMENT_DEBUGGING_MICROMAMBA_PATH": str(wrapper),
        "ORGASEG_WHEELHOUSE": str(wheelhouse),
        "TMPDIR": str(base / "tmp"),  # pre_test data and album's temporary files stay in here
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    env.pop("ALBUM_LOGGER_LEVEL", None)
    cli = Album(executable, env, workdir, catalog_repo, timings)
    added = cli("add-catalog", catalog_repo)
    assert f"Added catalog {catalog_repo}" in added.output, added.output
    return cli
