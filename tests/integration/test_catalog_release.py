"""Release tags of older solution versions (fast; album's deploy code, no album CLI, not marked
integration): a version once released never changes, so ``build_catalog.py --tag`` releases an
older version that the index still lists from the commit that declared it, not from HEAD."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STEP = "demo-data"
GIT_IDENTITY = ["-c", "user.name=orgaseg tests", "-c", "user.email=tests@orgaseg.invalid",
                "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"]


def load_build_catalog(root: Path):
    """``root/catalog/build_catalog.py`` as a module (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location(f"build_catalog_{abs(hash(str(root)))}",
                                                  root / "catalog" / "build_catalog.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *GIT_IDENTITY, "-C", str(repo), *args], check=True,
                          capture_output=True, text=True).stdout.strip()


def _catalog_repo(root: Path) -> Path:
    """A catalog with one solution, ``demo-data``, as in this checkout."""
    root.mkdir()
    shutil.copy2(REPO / "album_catalog_index.json", root)
    (root / "catalog").mkdir()
    shutil.copy2(REPO / "catalog" / "build_catalog.py", root / "catalog")
    shutil.copytree(REPO / "solutions" / STEP, root / "solutions" / STEP)
    return root


def _set_version(repo: Path, old: str, new: str) -> None:
    path = repo / "solutions" / STEP / "solution.py"
    text = path.read_text(encoding="utf-8")
    assert f'version="{old}"' in text
    path.write_text(text.replace(f'version="{old}"', f'version="{new}"'), encoding="utf-8")


def _deployed_version(repo: Path, tag: str) -> str:
    text = _git(repo, "show", f"{tag}:solutions/orgaseg/{STEP}/solution.py")
    return text.split('version="', 1)[1].split('"', 1)[0]


def test_an_older_version_is_released_from_its_own_commit(tmp_path):
    repo = _catalog_repo(tmp_path / "catalog")
    current = load_build_catalog(repo)._source_versions(repo)
    (tag_now,) = current
    version_now = tag_now.rsplit("-", 1)[1]
    _set_version(repo, version_now, "0.1.0")  # the CHANGELOG has both versions
    _git(repo, "init", "-q", "-b", "main")
    build = load_build_catalog(repo)
    build.build_catalog(repo)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "release 0.1.0 (never tagged)")
    old_source = _git(repo, "rev-parse", "HEAD")
    _set_version(repo, "0.1.0", version_now)
    build.build_catalog(repo)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", f"release {version_now}")

    created, existing = build.create_release_tags(repo, repo_url=str(repo))

    old_tag = f"orgaseg-{STEP}-0.1.0"
    assert created == sorted([old_tag, tag_now]) and existing == []
    assert _deployed_version(repo, old_tag) == "0.1.0"
    assert _deployed_version(repo, tag_now) == version_now
    assert _git(repo, "rev-parse", f"{old_tag}~1") == old_source
    assert _git(repo, "rev-parse", f"{tag_now}~1") == _git(repo, "rev-parse", "main")
    # main and the working tree are untouched; a second run creates nothing
    assert not (repo / "solutions" / "orgaseg").exists()
    assert build.create_release_tags(repo, repo_url=str(repo)) == ([], sorted([old_tag, tag_now]))


def test_an_older_version_without_its_source_in_the_history_stays_untagged(tmp_path, caplog):
    repo = _catalog_repo(tmp_path / "catalog")
    build = load_build_catalog(repo)
    (tag_now,) = build._source_versions(repo)
    version_now = tag_now.rsplit("-", 1)[1]
    _set_version(repo, version_now, "0.1.0")
    build.build_catalog(repo)  # the index now lists 0.1.0 ...
    _set_version(repo, "0.1.0", version_now)
    build.build_catalog(repo)
    _git(repo, "init", "-q", "-b", "main")  # ... but no commit of this history declares it
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "a copy without history")

    created, _ = build.create_release_tags(repo, repo_url=str(repo))

    assert created == [tag_now]
    assert f"orgaseg-{STEP}-0.1.0" not in _git(repo, "tag", "--list").split()
    assert "no commit in this repository's history declares" in caplog.text


# ---------------------------------------------------------------- installable environments (issue 14)

def _release_repo(tmp_path: Path, steps: tuple[str, ...], origin: str | None) -> tuple[Path, object]:
    """A catalog repository holding ``steps`` and the orgaseg-core source (pyproject.toml,
    orgaseg_core/), committed, with the remote ``origin`` when given."""
    repo = tmp_path / "catalog"
    repo.mkdir()
    for name in ("album_catalog_index.json", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, repo / name)
    (repo / "catalog").mkdir()
    shutil.copy2(REPO / "catalog" / "build_catalog.py", repo / "catalog")
    shutil.copytree(REPO / "orgaseg_core", repo / "orgaseg_core",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for step in steps:
        shutil.copytree(REPO / "solutions" / step, repo / "solutions" / step)
    build = load_build_catalog(repo)
    build.build_catalog(repo)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "release")
    if origin:
        _git(repo, "remote", "add", "origin", origin)
    return repo, build


def _requirement(repo: Path, tag: str, path: str):
    """The orgaseg-core requirement of an environment file at a tag."""
    import yaml
    from packaging.requirements import Requirement

    env = yaml.safe_load(_git(repo, "show", f"{tag}:{path}"))
    pip = [r for d in env["dependencies"] if isinstance(d, dict) for r in d["pip"]]
    core = [Requirement(r) for r in pip if Requirement(r).name == "orgaseg-core"]
    assert len(core) == 1, pip
    return core[0], env


def test_released_environments_install_orgaseg_core_from_the_catalog_at_their_tag(tmp_path):
    origin = "https://example.org/lab/orgaseg.git"
    repo, build = _release_repo(tmp_path, ("demo-data", "segment"), origin)
    created, _ = build.create_release_tags(repo)  # the URL: the remote 'origin'
    versions = build._source_versions(repo)
    assert sorted(created) == sorted(versions)
    for tag, step in versions.items():
        folder = f"solutions/orgaseg/{step}"
        for name in ("environment.yml", "solution.environment.yml"):
            core, _ = _requirement(repo, tag, f"{folder}/{name}")
            assert core.url == f"git+{origin}@{tag}", (name, core.url)
            assert not core.specifier
            assert core.extras == ({"data"} if step == "demo-data" else {"analysis"})
        files = _git(repo, "ls-tree", "--name-only", f"{tag}:{folder}").split()
        if step == "demo-data":  # no TensorFlow: no GPU variant
            assert "environment.gpu.yml" not in files
        else:
            gpu, env = _requirement(repo, tag, f"{folder}/environment.gpu.yml")
            assert gpu.url == f"git+{origin}@{tag}" and gpu.extras == {"analysis-gpu"}
            _, cpu_env = _requirement(repo, tag, f"{folder}/solution.environment.yml")
            # otherwise what album deploys: the same conda packages (album-solution-api ...)
            assert [d for d in env["dependencies"] if isinstance(d, str)] == \
                [d for d in cpu_env["dependencies"] if isinstance(d, str)]
    # the source environment files on main keep their pins
    source = (repo / "solutions" / "segment" / "environment.yml").read_text()
    assert "      - orgaseg-core[analysis]==" in source and "- 'orgaseg-core" not in source


def test_a_release_needs_the_catalog_url(tmp_path):
    repo, build = _release_repo(tmp_path, ("demo-data",), origin=None)
    try:
        build.create_release_tags(repo)
    except build.CatalogBuildError as exc:
        assert "--repo-url" in str(exc)
    else:
        raise AssertionError("released without a catalog URL")
    assert _git(repo, "tag", "--list") == ""


def test_catalog_urls_become_pip_git_urls(tmp_path):
    build = load_build_catalog(REPO)
    assert build.pip_git_url("https://github.com/lab/orgaseg.git") == "git+https://github.com/lab/orgaseg.git"
    assert build.pip_git_url("git@github.com:lab/orgaseg.git") == "git+ssh://git@github.com/lab/orgaseg.git"
    assert build.pip_git_url("ssh://git@host/lab/orgaseg.git/") == "git+ssh://git@host/lab/orgaseg.git"
    # a local clone: pip before 24 refuses file:/// (no host) in a requirement, git reads both
    assert build.pip_git_url(str(tmp_path)) == f"git+file://localhost{tmp_path.resolve().as_posix()}"
    assert build.pip_git_url(tmp_path.as_uri()) == f"git+file://localhost{tmp_path.as_posix()}"
    assert build.release_requirement("[data]", "https://h/o/r.git", "orgaseg-split-0.8.0") == \
        "orgaseg-core[data] @ git+https://h/o/r.git@orgaseg-split-0.8.0"


def test_pip_builds_orgaseg_core_from_a_release_tag(tmp_path):
    """What a user's environment does with the released reference: pip clones the catalog at the
    tag and builds orgaseg-core of that release (a local clone as the catalog URL)."""
    import sys
    import zipfile

    from packaging.requirements import Requirement

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    repo, build = _release_repo(tmp_path, ("demo-data",), origin=None)
    (tag,), _ = build.create_release_tags(repo, repo_url=str(repo))
    core, _ = _requirement(repo, tag, "solutions/orgaseg/demo-data/solution.environment.yml")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q",
                    "--no-deps", "--no-build-isolation", "-w", str(wheels), str(core)], check=True)
    (wheel,) = wheels.glob("orgaseg_core-*.whl")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert wheel.name.startswith(f"orgaseg_core-{project['version']}-")
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    extras = {line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Provides-Extra:")}
    assert set(project["optional-dependencies"]) <= extras and core.extras <= extras
