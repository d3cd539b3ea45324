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

    created, existing = build.create_release_tags(repo)

    old_tag = f"orgaseg-{STEP}-0.1.0"
    assert created == sorted([old_tag, tag_now]) and existing == []
    assert _deployed_version(repo, old_tag) == "0.1.0"
    assert _deployed_version(repo, tag_now) == version_now
    assert _git(repo, "rev-parse", f"{old_tag}~1") == old_source
    assert _git(repo, "rev-parse", f"{tag_now}~1") == _git(repo, "rev-parse", "main")
    # main and the working tree are untouched; a second run creates nothing
    assert not (repo / "solutions" / "orgaseg").exists()
    assert build.create_release_tags(repo) == ([], sorted([old_tag, tag_now]))


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

    created, _ = build.create_release_tags(repo)

    assert created == [tag_now]
    assert f"orgaseg-{STEP}-0.1.0" not in _git(repo, "tag", "--list").split()
    assert "no commit in this repository's history declares" in caplog.text
