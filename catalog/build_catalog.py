"""Build the album catalog files at the repository root from the solutions in ``solutions/<step>/``.

The repository is an album catalog of type "direct". album reads from its git repository:

* ``album_catalog_index.json``: name, index version and type of the catalog (hand-written).
* ``album_catalog_index.db``: the SQLite index of every solution version; ``album add-catalog``
  and ``album update`` take it from the branch ``main``.
* ``album_solution_list.json``: the same index as readable JSON (written with the index).
* ``solutions/<group>/<name>/``: the deployed solution. ``album install group:name:version``
  clones the tag ``<group>-<name>-<version>`` and copies this folder: ``solution.py``,
  ``environment.yml``, ``README.md``, ``CHANGELOG.md`` from ``solutions/<step>/``, plus what
  album deploy writes next to them: ``solution.yml`` (the metadata) and
  ``solution.environment.yml`` (the environment album installs, with album-solution-api added).

The source of each solution is ``solutions/<step>/``; this script deploys every one of them
into ``solutions/orgaseg/<step>/`` and the index, with album's own code (the steps of
``album deploy <folder> <catalog> --no-conda-lock``: album's solution loader and schema check,
replicability checks, changelog handling, ``Catalog.add`` and ``ResourceManager.write_solution_files``),
without the git part: commit the result, then tag it (``--tags`` prints the tags).

No lock file is written (conda-lock needs conda-forge); album installs the environment from
``solution.environment.yml`` and says so. The release date in each ``CHANGELOG.md`` is the
timestamp of the version, so a build is reproducible and ``--check`` can compare it.

Usage (from the repository root, with the project venv)::

    python catalog/build_catalog.py            # rebuild the catalog files in place
    python catalog/build_catalog.py --check    # exit 1 if the committed files are out of date
    python catalog/build_catalog.py --tags     # the git tags a release of this state needs
"""

from __future__ import annotations

import argparse
import filecmp
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
META_FILE = "album_catalog_index.json"
INDEX_FILE = "album_catalog_index.db"
SOLUTION_LIST_FILE = "album_solution_list.json"
SOLUTIONS = "solutions"
CATALOG_FILES = (META_FILE, INDEX_FILE, SOLUTION_LIST_FILE)


class CatalogBuildError(RuntimeError):
    """A solution cannot be deployed (the message says which and why)."""


def catalog_meta(root: Path = REPO) -> dict:
    """The content of ``album_catalog_index.json`` (name, version, type)."""
    return json.loads((root / META_FILE).read_text(encoding="utf-8"))


def source_solution_folders(root: Path = REPO, group: str | None = None) -> list[Path]:
    """``solutions/<step>/`` folders holding a ``solution.py``, sorted; the deployed
    ``solutions/<group>/`` folder is not a source."""
    group = group or catalog_meta(root)["name"]
    base = root / SOLUTIONS
    return sorted(p for p in base.iterdir()
                  if p.is_dir() and p.name != group and (p / "solution.py").is_file())


def _controller(home: Path):
    """album's controller, for writing catalog files only.

    album creates its package manager together with the environment manager, and downloads
    micromamba if it finds none. Writing the files of a deployment needs only the function that
    adds album-solution-api to the environment file, so this controller hands album's own
    function out instead of an environment manager.
    """
    from album.core.controller.album_controller import AlbumController
    from album.core.controller.environment_manager import EnvironmentManager

    class _FrameworkOnly:
        _append_framework_to_dependencies = EnvironmentManager._append_framework_to_dependencies

    class _CatalogFilesController(AlbumController):
        def environment_manager(self):
            return _FrameworkOnly()

    return _CatalogFilesController(home)


def _release_timestamp(folder: Path, version: str) -> str:
    """``<date>T00:00:00.000000`` from the ``## [version] - <date>`` line of CHANGELOG.md."""
    from album.core.utils.export.keepachangelog import to_raw_dict

    changelog = folder / "CHANGELOG.md"
    if not changelog.is_file():
        raise CatalogBuildError(f"{changelog}: missing; add '## [{version}] - YYYY-MM-DD' and the changes")
    release = to_raw_dict(str(changelog)).get(version.lower())
    date = (release or {}).get("metadata", {}).get("release_date", "")
    if not date:
        raise CatalogBuildError(f"{changelog}: no release date for version {version} "
                                f"(expected a line '## [{version}] - YYYY-MM-DD')")
    return f"{date}T00:00:00.000000"


def build_catalog(root: Path = REPO, out: Path | None = None) -> list[str]:
    """Deploy every ``root/solutions/<step>/`` into the catalog files under ``out`` (default: root).

    ``out`` must hold ``album_catalog_index.json``; an existing index there is updated (other
    solutions and versions stay in it), each solution's deployed folder is written anew.
    album stamps every index entry with the time it was written; when nothing but those stamps
    changed, the previous index files are kept, so a build without changes changes no file.
    Returns the coordinates ``group:name:version`` deployed.
    """
    out_dir = Path(out).resolve() if out else Path(root).resolve()
    previous = {}
    for name in (INDEX_FILE, SOLUTION_LIST_FILE):
        if (out_dir / name).is_file():
            previous[name] = (out_dir / name).read_bytes()
    deployed = _deploy_all(root, out_dir)
    if len(previous) == 2:
        name = catalog_meta(out_dir)["name"]
        with tempfile.TemporaryDirectory() as tmp:
            old_db = Path(tmp) / INDEX_FILE
            old_db.write_bytes(previous[INDEX_FILE])
            unchanged = _normalised(_index_export(old_db, name)) == \
                _normalised(_index_export(out_dir / INDEX_FILE, name))
        if unchanged:
            for file_name, content in previous.items():
                (out_dir / file_name).write_bytes(content)
    return deployed


def _normalised(entries: list) -> list:
    """Index entries (album exports each as a JSON text) without what album sets when it writes
    them: the time and the row number, which grows each time an entry is replaced."""
    result = []
    for entry in entries:
        entry = json.loads(entry) if isinstance(entry, str) else dict(entry)
        entry.pop("timestamp", None)
        entry.pop("solution_id", None)
        result.append(entry)
    return sorted(result, key=lambda e: json.dumps(e, sort_keys=True))


def _deploy_all(root: Path, out: Path) -> list[str]:
    from album.core.controller.deploy_manager import DeployManager
    from album.core.model.catalog import Catalog
    from album.core.utils.export.changelog import process_changelog_file

    root = Path(root).resolve()
    meta = catalog_meta(out)
    if meta.get("type") != "direct":
        raise CatalogBuildError(f"{out / META_FILE}: type must be 'direct', got {meta.get('type')!r}")
    deployed = []
    with tempfile.TemporaryDirectory(prefix="album-home-") as home:
        controller = _controller(Path(home))
        catalog = Catalog(None, meta["name"], str(out), src=str(out), catalog_type="direct")
        catalog.load_index()  # creates the index file if there is none
        try:
            for folder in source_solution_folders(root, meta["name"]):
                solution = controller.state_manager().load(str(folder / "solution.py"))
                coordinates = solution.coordinates()
                if coordinates.group() != meta["name"]:
                    raise CatalogBuildError(f"{folder / 'solution.py'}: group {coordinates.group()!r} "
                                            f"is not the catalog name {meta['name']!r}")
                if coordinates.name() != folder.name:
                    raise CatalogBuildError(f"{folder / 'solution.py'}: name {coordinates.name()!r} "
                                            f"differs from its folder name {folder.name!r}")
                # what album deploy checks and records, in its order
                controller.resource_manager().check_file_dependencies(solution, folder)
                reasons = controller.download_manager().check_resources(solution, folder)
                reasons += DeployManager._get_replicability_reasons(solution, no_conda_lock=True)
                DeployManager._check_replicability(catalog, solution, reasons,
                                                   no_replicability=False, force_deploy=False)
                process_changelog_file(catalog, solution, folder)
                DeployManager._carry_forward_doi(catalog, solution)
                solution.setup()["timestamp"] = _release_timestamp(folder, coordinates.version())
                target = out.joinpath(controller.configuration()
                                      .get_solution_path_suffix_unversioned(coordinates))
                if target.exists():
                    shutil.rmtree(target)
                catalog.add(solution, force_overwrite=True)
                controller.resource_manager().write_solution_files(
                    catalog, str(out), solution, folder, no_conda_lock=True)
                deployed.append(str(coordinates))
        finally:
            catalog.dispose()
            controller.close()
    return deployed


def release_tags(root: Path = REPO) -> list[str]:
    """The git tags album clones to install each solution: ``<group>-<name>-<version>``."""
    from album.core.model.catalog_index import CatalogIndex

    index = CatalogIndex(catalog_meta(root)["name"], root / INDEX_FILE)
    try:
        solutions = index.get_all_solutions()
    finally:
        index.close()
    return sorted("-".join([s["group"], s["name"], s["version"]]) for s in solutions)


def create_release_tags(root: Path = REPO) -> tuple[list[str], list[str]]:
    """Tag HEAD with every release tag that does not exist yet; returns (created, already there).

    Refuses when the committed catalog differs from the working tree, because album installs
    what the tagged commit holds, not what is on disk.
    """
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                              text=True).stdout

    catalog_paths = list(CATALOG_FILES) + [SOLUTIONS]
    if git("status", "--porcelain", "--", *catalog_paths).strip():
        raise CatalogBuildError("the catalog files or solutions/ have uncommitted changes; "
                                "commit them before tagging a release")
    existing = set(git("tag", "--list").split())
    created, kept = [], []
    for tag in release_tags(root):
        if tag in existing:
            kept.append(tag)
        else:
            git("tag", tag)
            created.append(tag)
    return created, kept


def _index_export(db: Path, name: str) -> list:
    from album.core.model.catalog_index import CatalogIndex

    with tempfile.TemporaryDirectory() as tmp:
        index = CatalogIndex(name, db)
        try:
            index.export(Path(tmp) / "export.json")
        finally:
            index.close()
        return json.loads((Path(tmp) / "export.json").read_text(encoding="utf-8"))


def check_catalog(root: Path = REPO) -> list[str]:
    """Rebuild the catalog in a temporary copy and list how the committed files differ (empty: up to date)."""
    root = Path(root).resolve()
    meta = catalog_meta(root)
    group_dir = Path(SOLUTIONS) / meta["name"]
    problems = []
    for name in (INDEX_FILE, SOLUTION_LIST_FILE):
        if not (root / name).is_file():
            problems.append(f"{name} is missing: run python catalog/build_catalog.py")
    if problems:
        return problems
    with tempfile.TemporaryDirectory(prefix="orgaseg-catalog-check-") as tmp:
        fresh = Path(tmp)
        for name in CATALOG_FILES:
            shutil.copy2(root / name, fresh / name)
        if (root / group_dir).is_dir():
            shutil.copytree(root / group_dir, fresh / group_dir)
        build_catalog(root, fresh)

        fresh_index = _normalised(_index_export(fresh / INDEX_FILE, meta["name"]))
        if _normalised(_index_export(root / INDEX_FILE, meta["name"])) != fresh_index:
            problems.append(f"{INDEX_FILE} differs from a fresh build")
        committed_list = json.loads((root / SOLUTION_LIST_FILE).read_text(encoding="utf-8"))
        if _normalised(committed_list) != fresh_index:
            problems.append(f"{SOLUTION_LIST_FILE} differs from a fresh build")
        committed = {p.relative_to(root) for p in (root / group_dir).rglob("*") if p.is_file()} \
            if (root / group_dir).is_dir() else set()
        built = {p.relative_to(fresh) for p in (fresh / group_dir).rglob("*") if p.is_file()}
        for rel in sorted(built - committed):
            problems.append(f"{rel} is missing")
        for rel in sorted(committed - built):
            if rel.name != "README.md" or rel.parent != group_dir:
                problems.append(f"{rel} is not produced by a build (left over?)")
        for rel in sorted(built & committed):
            if not filecmp.cmp(root / rel, fresh / rel, shallow=False):
                problems.append(f"{rel} differs from a fresh build")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true",
                        help="only compare the committed catalog files with a fresh build")
    action.add_argument("--tags", action="store_true",
                        help="print the git tags that a release of the current catalog needs")
    action.add_argument("--tag", action="store_true",
                        help="create the missing release tags at HEAD (after committing a build), "
                             "so that album can install from this clone")
    args = parser.parse_args(argv)
    # album reports through the root logger: show its warnings (e.g. that no lock file is
    # written), not its notice that an entry of the same version is replaced, which every build does
    logging.basicConfig(level=logging.ERROR if args.check else logging.WARNING, format="album: %(message)s")
    logging.getLogger().addFilter(lambda record: "already exists! Overwriting" not in record.getMessage())
    try:
        if args.check:
            problems = check_catalog(REPO)
            for problem in problems:
                print(f"out of date: {problem}", file=sys.stderr)
            if problems:
                print("run: python catalog/build_catalog.py", file=sys.stderr)
                return 1
            print("catalog files are up to date")
            return 0
        if args.tag:
            created, kept = create_release_tags(REPO)
            print("created tags: " + (" ".join(created) or "none"))
            if kept:
                print("already tagged (a released version does not change): " + " ".join(kept))
            return 0
        if args.tags:
            for tag in release_tags(REPO):
                print(tag)
            return 0
        for coordinates in build_catalog(REPO):
            print(f"deployed {coordinates}")
        print(f"wrote {INDEX_FILE}, {SOLUTION_LIST_FILE} and {SOLUTIONS}/{catalog_meta(REPO)['name']}/; "
              "commit them, then tag the commit: " + " ".join(release_tags(REPO)))
        return 0
    except CatalogBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
