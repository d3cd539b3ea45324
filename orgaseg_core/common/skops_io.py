"""scikit-learn random forests stored in skops format, loaded with a strict type check.

skops (unlike pickle) builds only the types it is told to trust, and scikit-learn's own
estimators are trusted by default, so a file could still hold any scikit-learn object. orgaseg
therefore trusts one extra type (``sklearn.tree._tree.Tree``, the arrays of a decision tree)
and then checks that what was built is exactly a RandomForestClassifier of decision trees on
the expected number of features and classes. Used by the pixel forest (segmentation) and the
measurement classifier (classification).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import InputFileError, OrgasegError

#: the only type a stored forest may hold beyond skops' defaults
TRUSTED_TYPES = ("sklearn.tree._tree.Tree",)


def import_skops(purpose: str, extra: str):
    """``skops.io`` (with scikit-learn), or a clear error naming the extra to install."""
    try:
        import sklearn.ensemble  # noqa: F401
        import skops.io
    except ImportError as exc:
        raise OrgasegError(f"{purpose} needs scikit-learn and skops ({exc}); install the {extra} "
                           f"extra: pip install 'orgaseg-core[{extra}]'") from exc
    return skops.io


def save_skops(model, path: Path, *, purpose: str, extra: str) -> Path:
    """Write a fitted scikit-learn model in skops format, atomically."""
    from .outputs import atomic_path

    sio = import_skops(purpose, extra)
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(sio.dumps(model))
    return Path(path)


def read_random_forest(path: Path, *, n_features: int, classes: Iterable | None, what: str,
                       purpose: str, extra: str):
    """The RandomForestClassifier in the skops file ``path``.

    Refused with an InputFileError naming the file unless it holds exactly a scikit-learn
    RandomForestClassifier of DecisionTreeClassifiers on ``n_features`` features, one output,
    and (``classes`` given) classes within ``classes``. ``what`` says what the file should be.
    """
    sio = import_skops(purpose, extra)
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, f"{what} is missing")
    data = path.read_bytes()
    try:
        untrusted = sio.get_untrusted_types(data=data)
        unknown = sorted(set(untrusted) - set(TRUSTED_TYPES))
        if unknown:
            raise InputFileError(path, f"holds types orgaseg does not load: {', '.join(unknown)}")
        forest = sio.loads(data, trusted=list(untrusted))
    except InputFileError:
        raise
    except Exception as exc:  # skops raises many kinds on a damaged file
        raise InputFileError(path, f"cannot be read as a skops file ({type(exc).__name__}: {exc})") from exc
    found = getattr(forest, "classes_", None)
    if (type(forest) is not RandomForestClassifier
            or not all(type(tree) is DecisionTreeClassifier for tree in getattr(forest, "estimators_", [None]))
            or getattr(forest, "n_outputs_", None) != 1 or found is None
            or (classes is not None and not set(np.asarray(found).tolist()) <= set(classes))
            or getattr(forest, "n_features_in_", None) != n_features):
        raise InputFileError(path, f"is not {what} (a random forest of decision trees on "
                                   f"{n_features} features)")
    return forest
