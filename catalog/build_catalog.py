"""Build the album catalog files of this repository from the solutions in ``solutions/<step>/``.

The repository is an album catalog of type "direct". album reads from its git repository:

* ``album_catalog_index.json``: name, index version and type of the catalog (hand-written).
* ``album_catalog_index.db``: the SQLite index of every solution version; ``album add-catalog``
  and ``album update`` take it from the branch ``main``.
* ``album_solution_list.json``: the same index as readable JSON (written with the index).
* ``solutions/<group>/<name>/`` AT THE TAG ``<group>-<name>-<version>``: ``album install``
  clones that tag and copies this folder (``solution.py``, ``environment.yml``, ``README.md``,
  ``CHANGELOG.md`` from ``solutions/<step>/``, plus what album deploy writes next to them:
  ``solution.yml`` and ``solution.environment.yml``).

So ``main`` holds only the sources (``solutions/<step>/``) and the index; the deployed folders
exist only in release commits: ``--tag`` makes one commit on top of HEAD that adds
``solutions/<group>/<step>/`` for every solution (never checked out, never on ``main``) and
points each missing release tag at it. The deployed files are made with album's own code (the
steps of ``album deploy <folder> <catalog> --no-conda-lock``: album's solution loader and schema
check, replicability checks, changelog handling, ``Catalog.add`` and
``ResourceManager.write_solution_files``), without its git push.

No lock file is written (conda-lock needs conda-forge); album installs the environment from
``solution.environment.yml`` and says so. The release date in each ``CHANGELOG.md`` is the
timestamp of the version, so a build is reproducible and ``--check`` can compare it.

orgaseg-core is not on a package index: the source ``environment.yml`` pins
``orgaseg-core[<extra>]==<version>``, and the deployed environment files of a release install it
from the catalog's own git repository at the solution's release tag instead,
``orgaseg-core[<extra>] @ git+<catalog URL>@<group>-<name>-<version>`` (the tag's commit holds the
library as it was released). The URL is the one users add the catalog from: ``--repo-url``, else
the git remote ``origin``. A TensorFlow solution also gets ``environment.gpu.yml`` beside it: the
same environment with TensorFlow's CUDA build (the ``-gpu`` extra), for a GPU installation.

Usage (from the repository root, with the project venv)::

    python catalog/build_catalog.py            # rebuild the index files in place
    python catalog/build_catalog.py --check    # exit 1 if the committed index is out of date
    python catalog/build_catalog.py --tags     # the git tags a release of this state needs
    python catalog/build_catalog.py --tag      # after committing: create the missing release tags
    python catalog/build_catalog.py --tag --repo-url https://github.com/<owner>/orgaseg.git
"""

from __future__ import annotations

import argparse
import json
import os
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
META_FILE = "album_catalog_index.json"
INDEX_FILE = "album_catalog_index.db"
SOLUTION_LIST_FILE = "album_solution_list.json"
SOLUTIONS = "solutions"
CATALOG_FILES = (META_FILE, INDEX_FILE, SOLUTION_LIST_FILE)
CORE = "orgaseg-core"
ENVIRONMENT_FILES = ("environment.yml", "solution.environment.yml")  # the deployed ones
GPU_ENVIRONMENT_FILE = "environment.gpu.yml"
#: extra of a CPU environment -> the same with TensorFlow's CUDA build (pyproject.toml)
GPU_EXTRAS = {"segmentation": "segmentation-gpu", "analysis": "analysis-gpu"}
# the orgaseg-core line of an environment file: "  - orgaseg-core[extra]==1.2.3"
_CORE_LINE = re.compile(r"^(?P<lead>[ \t]*-[ \t]*)(?P<quote>['\"]?)orgaseg-core(?P<extras>\[[^\]]*\])?"
                        r"[ \t]*==[ \t]*(?P<version>[^\s'\"#]+)(?P=quote)[ \t]*$", re.MULTILINE)
_SCP_LIKE = re.compile(r"^(?P<user>[^@/:]+@)?(?P<host>[^/:]+):(?P<path>(?!//).+)$")


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


def pip_git_url(repo_url: str) -> str:
    """The catalog's git URL as pip's VCS URL (``git+<url>``), without a revision.

    A local path becomes ``file://localhost/<absolute path>`` (pip before 24 refuses a ``file:``
    URL without a host in a requirement; git reads both); an scp-like ``user@host:path`` becomes
    ``ssh://user@host/path``; ``http(s)://``, ``ssh://``, ``git://`` and ``file://`` URLs stay.
    """
    url = str(repo_url).strip()
    if url.startswith("git+"):
        url = url[len("git+"):]
    if re.match(r"^(https?|ssh|git|file)://", url):
        if url.startswith("file:///"):
            url = "file://localhost/" + url[len("file:///"):]
        return "git+" + url.rstrip("/")
    scp = _SCP_LIKE.match(url)
    if scp and not re.match(r"^[A-Za-z]:[\\/]", url) and not Path(url).exists():
        return f"git+ssh://{scp['user'] or ''}{scp['host']}/{scp['path'].lstrip('/')}"
    path = Path(url).expanduser().resolve()
    return "git+file://localhost" + path.as_posix()


def release_requirement(extras: str, repo_url: str, tag: str) -> str:
    """``orgaseg-core<extras> @ git+<url>@<tag>``: orgaseg-core from the catalog at a release tag."""
    return f"{CORE}{extras or ''} @ {pip_git_url(repo_url)}@{tag}"


def origin_url(root: Path = REPO) -> str | None:
    """The URL of the git remote ``origin`` of ``root`` (None when there is none)."""
    result = subprocess.run(["git", "-C", str(root), "remote", "get-url", "origin"],
                            capture_output=True, text=True)
    return result.stdout.strip() or None if result.returncode == 0 else None


def _release_environments(folder: Path, repo_url: str, tag: str) -> None:
    """Point the orgaseg-core line of the deployed environment files in ``folder`` at ``tag`` of
    the catalog repository, and write the GPU variant of a TensorFlow solution's environment."""
    for name in ENVIRONMENT_FILES:
        path = folder / name
        text = path.read_text(encoding="utf-8")
        lines = list(_CORE_LINE.finditer(text))
        if len(lines) != 1:
            raise CatalogBuildError(f"{path}: expected one line '- {CORE}[<extra>]==<version>', "
                                    f"found {len(lines)}")
        line = lines[0]
        requirement = release_requirement(line["extras"], repo_url, tag)
        text = text[:line.start()] + f"{line['lead']}'{requirement}'" + text[line.end():]
        path.write_text(text, encoding="utf-8")
        if name == "solution.environment.yml":
            extras = (line["extras"] or "[]")[1:-1].split(",")
            gpu = [GPU_EXTRAS.get(e.strip(), e.strip()) for e in extras if e.strip()]
            if gpu != [e.strip() for e in extras if e.strip()]:
                gpu_requirement = release_requirement("[" + ",".join(gpu) + "]", repo_url, tag)
                gpu_text = text.replace(f"'{requirement}'", f"'{gpu_requirement}'")
                gpu_text = re.sub(r"^name:[ \t]*(\S+)[ \t]*$", r"name: \1-gpu", gpu_text, count=1,
                                  flags=re.MULTILINE)
                (folder / GPU_ENVIRONMENT_FILE).write_text(
                    "# GPU variant of solution.environment.yml (TensorFlow's CUDA build): copy it onto\n"
                    "# solution.environment.yml before 'album install <this folder>' (README: GPU)\n"
                    + gpu_text, encoding="utf-8")


def build_catalog(root: Path = REPO, out: Path | None = None, deploy_root: Path | None = None,
                  repo_url: str | None = None) -> list[str]:
    """Deploy every ``root/solutions/<step>/`` into the index files under ``out`` (default: root).

    ``out`` must hold ``album_catalog_index.json``; an existing index there is updated (other
    solutions and versions stay in it). The deployed folders ``solutions/<group>/<step>/`` are
    written under ``deploy_root`` (default: a temporary folder, discarded), never into ``root``.
    album stamps every index entry with the time it was written; when nothing but those stamps
    changed, the previous index files are kept, so a build without changes changes no file.
    With ``repo_url`` (the catalog's git URL), the deployed environment files install
    orgaseg-core from that repository at each solution's release tag (the index does not hold
    them, so it does not depend on the URL). Returns the coordinates ``group:name:version``
    deployed.
    """
    out_dir = Path(out).resolve() if out else Path(root).resolve()
    previous = {}
    for name in (INDEX_FILE, SOLUTION_LIST_FILE):
        if (out_dir / name).is_file():
            previous[name] = (out_dir / name).read_bytes()
    with tempfile.TemporaryDirectory(prefix="orgaseg-deployed-") as tmp:
        deployed = _deploy_all(root, out_dir, Path(deploy_root) if deploy_root else Path(tmp), repo_url)
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
    them: the time and the row numbers, which grow each time an entry is replaced (the solution's
    and, for a citation only this solution has, the citation's)."""
    result = []
    for entry in entries:
        entry = json.loads(entry) if isinstance(entry, str) else dict(entry)
        entry.pop("timestamp", None)
        entry.pop("solution_id", None)
        if isinstance(entry.get("cite"), list):
            entry["cite"] = [{k: v for k, v in c.items() if k != "citation_id"} if isinstance(c, dict) else c
                             for c in entry["cite"]]
        result.append(entry)
    return sorted(result, key=lambda e: json.dumps(e, sort_keys=True))


def _deploy_all(root: Path, out: Path, deploy_root: Path, repo_url: str | None = None) -> list[str]:
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
                target = deploy_root.joinpath(controller.configuration()
                                              .get_solution_path_suffix_unversioned(coordinates))
                if target.exists():
                    shutil.rmtree(target)
                catalog.add(solution, force_overwrite=True)
                controller.resource_manager().write_solution_files(
                    catalog, str(deploy_root), solution, folder, no_conda_lock=True)
                if repo_url:
                    _release_environments(target, repo_url, "-".join(
                        [coordinates.group(), coordinates.name(), coordinates.version()]))
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


def _git(root: Path, *args: str, env: dict | None = None) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


def _source_versions(root: Path = REPO) -> dict[str, str]:
    """``<group>-<name>-<version>`` tag -> step folder name, for the versions in ``solutions/``."""
    from album.core.controller.album_controller import AlbumController

    group = catalog_meta(root)["name"]
    found = {}
    with tempfile.TemporaryDirectory(prefix="album-home-") as home:
        controller = AlbumController(home)
        try:
            for folder in source_solution_folders(root, group):
                coordinates = controller.state_manager().load(str(folder / "solution.py")).coordinates()
                found["-".join([coordinates.group(), coordinates.name(), coordinates.version()])] = folder.name
        finally:
            controller.close()
    return found


def _release_source(root: Path, step: str, version: str) -> str | None:
    """The newest commit in which ``solutions/<step>/solution.py`` declares ``version``: the
    source of that released version (None when the history does not have it)."""
    path = f"{SOLUTIONS}/{step}/solution.py"
    declared = re.compile(r"""\bversion\s*=\s*["']""" + re.escape(version) + r"""["']""")
    try:
        commits = _git(root, "log", "--format=%H", "--", path).split()
    except subprocess.CalledProcessError:
        return None
    for commit in commits:
        try:
            text = _git(root, "show", f"{commit}:{path}")
        except subprocess.CalledProcessError:  # the commit deleted the file
            continue
        if declared.search(text):
            return commit
    return None


def _release_commit(root: Path, parent: str, source_root: Path, tags: list[str], tmp: Path,
                    repo_url: str) -> str:
    """A commit on top of ``parent`` that adds the deployed folders of the solutions in
    ``source_root/solutions/<step>/``, made with git plumbing and a private index, so neither a
    branch, the working tree nor the user's staging area change."""
    deploy_root = tmp / "tree"
    # the committed index is current (checked by the caller); the build is for the deployed folders
    scratch = tmp / "index"
    scratch.mkdir()
    for name in CATALOG_FILES:
        shutil.copy2(Path(root) / name, scratch / name)
    build_catalog(source_root, scratch, deploy_root, repo_url=repo_url)
    env = dict(os.environ, GIT_INDEX_FILE=str(tmp / "git-index"))
    # a commit needs an identity; use the configured one, else a neutral release identity
    for key, value in (("GIT_AUTHOR_NAME", "orgaseg release"), ("GIT_AUTHOR_EMAIL", "release@orgaseg.invalid"),
                       ("GIT_COMMITTER_NAME", "orgaseg release"), ("GIT_COMMITTER_EMAIL", "release@orgaseg.invalid")):
        configured = subprocess.run(["git", "-C", str(root), "config",
                                     "user.email" if key.endswith("EMAIL") else "user.name"],
                                    capture_output=True, text=True).stdout.strip()
        env.setdefault(key, configured or value)
    _git(root, "read-tree", parent, env=env)
    # only the group folder: adding all of solutions/ would stage the sources as deleted
    _git(root, "--work-tree", str(deploy_root), "add", "-f", "--",
         f"{SOLUTIONS}/{catalog_meta(root)['name']}", env=env)
    tree = _git(root, "write-tree", env=env)
    return _git(root, "commit-tree", tree, "-p", parent, "-m",
                "Release " + " ".join(tags) + "\n\nThe deployed album solutions of this "
                "release; made by catalog/build_catalog.py --tag, not part of main.", env=env)


def create_release_tags(root: Path = REPO, repo_url: str | None = None) -> tuple[list[str], list[str]]:
    """Tag a release commit for every release tag that does not exist yet.

    The versions in ``solutions/`` are released from HEAD: one commit on top of HEAD that adds
    their deployed ``solutions/<group>/<step>/`` folders. An older version that the index still
    lists but that has no tag (a fresh clone without tags) is released from its own source: the
    newest commit in the history whose ``solution.py`` declares that version, with a release
    commit on top of it, so a released version never changes. A version whose source is not in
    the history (a shallow clone, a copy) is reported and left untagged. Refuses when the index
    files are out of date or not committed, because album reads the index from ``main``.
    ``repo_url``: the git URL users add the catalog from (default: the remote ``origin``); the
    released environment files install orgaseg-core from it at the release tag.
    Returns (tags created, tags that already existed).
    """
    problems = check_catalog(root)
    if problems:
        raise CatalogBuildError("the catalog index is out of date (" + "; ".join(problems)
                                + "): run python catalog/build_catalog.py and commit")
    if _git(root, "status", "--porcelain", "--", *CATALOG_FILES, SOLUTIONS):
        raise CatalogBuildError("the catalog files or solutions/ have uncommitted changes; "
                                "commit them before tagging a release")
    existing = set(_git(root, "tag", "--list").split())
    wanted = release_tags(root)
    missing = [tag for tag in wanted if tag not in existing]
    if missing:
        repo_url = repo_url or origin_url(root)
        if not repo_url:
            raise CatalogBuildError(
                "the released environments install orgaseg-core from the catalog's git repository, "
                "and this clone has no remote 'origin': pass --repo-url URL (the URL users add the "
                "catalog from, e.g. https://github.com/<owner>/orgaseg.git)")
    current = _source_versions(root)
    created = []
    now = [tag for tag in missing if tag in current]
    if now:
        with tempfile.TemporaryDirectory(prefix="orgaseg-release-") as tmp:
            commit = _release_commit(root, "HEAD", Path(root), now, Path(tmp), repo_url)
        for tag in now:
            _git(root, "tag", tag, commit)
        created += now
    # older versions, grouped by the commit that holds their source
    group = catalog_meta(root)["name"]
    sources: dict[str, list[tuple[str, str]]] = {}
    for tag in missing:
        if tag in current:
            continue
        step, version = tag[len(group) + 1:].rsplit("-", 1)
        commit = _release_source(root, step, version)
        if commit is None:
            logging.getLogger(__name__).warning(
                "%s: no commit in this repository's history declares %s version %s; not tagged "
                "(fetch the full history or the tag from the catalog's origin)", tag, step, version)
            continue
        sources.setdefault(commit, []).append((tag, step))
    for commit, releases in sources.items():
        with tempfile.TemporaryDirectory(prefix="orgaseg-release-") as tmp:
            source_root = Path(tmp) / "source"
            source_root.mkdir()
            paths = [META_FILE] + [f"{SOLUTIONS}/{step}" for _, step in releases]
            archive = subprocess.run(["git", "-C", str(root), "archive", commit, *paths],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(source_root)], input=archive, check=True)
            tags = [tag for tag, _ in releases]
            release = _release_commit(root, commit, source_root, tags, Path(tmp), repo_url)
        for tag in tags:
            _git(root, "tag", tag, release)
        created += tags
    return sorted(created), [tag for tag in wanted if tag in existing]


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
    """Rebuild the index in a temporary folder and list how the committed files differ (empty: up to date)."""
    root = Path(root).resolve()
    meta = catalog_meta(root)
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
        build_catalog(root, fresh)
        fresh_index = _normalised(_index_export(fresh / INDEX_FILE, meta["name"]))
        if _normalised(_index_export(root / INDEX_FILE, meta["name"])) != fresh_index:
            problems.append(f"{INDEX_FILE} differs from a fresh build")
        committed_list = json.loads((root / SOLUTION_LIST_FILE).read_text(encoding="utf-8"))
        if _normalised(committed_list) != fresh_index:
            problems.append(f"{SOLUTION_LIST_FILE} differs from a fresh build")
    if (root / SOLUTIONS / meta["name"]).exists():
        problems.append(f"{SOLUTIONS}/{meta['name']}/ is in the tree; the deployed solutions live only "
                        "in release commits (build_catalog.py --tag): remove it")
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
    parser.add_argument("--repo-url", metavar="URL",
                        help="with --tag: the git URL users add the catalog from (default: the "
                             "remote 'origin'); the released environments install orgaseg-core "
                             "from it at the release tag")
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
            created, kept = create_release_tags(REPO, repo_url=args.repo_url)
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
        print(f"wrote {INDEX_FILE} and {SOLUTION_LIST_FILE}; commit them, then run "
              "python catalog/build_catalog.py --tag to make the release tags: " + " ".join(release_tags(REPO)))
        return 0
    except (CatalogBuildError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
