"""QuPath classifications (``PathClass``) as QuPath itself reads them from GeoJSON.

Checked against qupath-core 0.4-0.6 (``GsonTools.PathClassTypeAdapter``, ``PathClass``,
``PathClassTools.isIgnoredClass``):

- ``null`` or no ``classification``: unclassified.
- a string: ``PathClass.fromString``: split on ``":"``, each part stripped; several parts are a
  derived class (``"Tumor: Positive"``).
- ``{"name": ..., "color": [r, g, b]}`` (0.4+) or ``{"names": [...], "color": ...}`` for a
  derived class (QuPath 0.4+ writes derived classes that way).
- ``{"name": ..., "colorRGB": int, "parentClass": {...}}`` (before 0.4): the parent chain gives
  the derived class, so ``Tumor: Positive`` and ``Stroma: Positive`` stay apart.
- An *ignored* class is one whose own (last) name ends with ``*`` (``Ignore*``, ``Region*``):
  QuPath leaves such objects out of measurements and training; so does orgaseg.

The display name is QuPath's ``toString()``: the names joined by ``": "``.
"""

from __future__ import annotations

from typing import Any

#: QuPath's delimiter between the names of a derived class (``PathClass.DELIMITER``).
DELIMITER = ":"
#: How QuPath shows a derived class (``PathClass.toString()``).
DISPLAY_DELIMITER = ": "

# A parent chain deeper than this is not a QuPath file (QuPath's own classes have 2-3 levels).
_MAX_DEPTH = 64


class MalformedClassification(ValueError):
    """A ``classification`` value QuPath itself could not read."""


def _names_of_string(text: str) -> list[str]:
    return [part.strip() for part in text.split(DELIMITER)]


def _legacy_chain(value: dict) -> list[str]:
    """Names of a pre-0.4 ``{"name", "colorRGB", "parentClass": {...}}`` class, root first."""
    names: list[str] = []
    node: Any = value
    for _ in range(_MAX_DEPTH):
        if node is None:
            break
        if not isinstance(node, dict):
            raise MalformedClassification(f"parentClass is not an object: {node!r}")
        name = node.get("name")
        if name is None:
            break  # QuPath's NULL_CLASS ends a chain
        if not isinstance(name, str):
            raise MalformedClassification(f"class name is not a string: {name!r}")
        names.append(name.strip())
        node = node.get("parentClass")
    else:
        raise MalformedClassification(f"parentClass chain deeper than {_MAX_DEPTH}")
    return names[::-1]


def classification_names(value: Any) -> list[str] | None:
    """The names of a ``properties.classification`` value, root first; None when unclassified.

    Raises MalformedClassification for values QuPath would refuse (a number, a list, an object
    without a name, names that are not strings, an empty name inside a derived class).
    """
    if value is None:
        return None
    if isinstance(value, str):
        names = _names_of_string(value)
    elif isinstance(value, dict):
        if value.get("name") is None and value.get("names") is None:
            return None  # {} is QuPath's serialised NULL_CLASS
        if "colorRGB" in value or "parentClass" in value:
            names = _legacy_chain(value)
        elif value.get("name") is not None:
            name = value["name"]
            if not isinstance(name, str):
                raise MalformedClassification(f"class name is not a string: {name!r}")
            # A proxy's "name" goes through PathClass.fromString, so ":" derives there too.
            names = _names_of_string(name)
        else:
            names_value = value.get("names")
            if names_value is None:
                return None
            if not isinstance(names_value, list) or not all(isinstance(n, str) for n in names_value):
                raise MalformedClassification(f"'names' must be a list of strings: {names_value!r}")
            names = [n.strip() for n in names_value]
    else:
        raise MalformedClassification(f"classification must be an object or a string, found "
                                      f"{type(value).__name__}: {value!r}")
    if not names or names == [""]:
        return None
    if any(not n for n in names):
        raise MalformedClassification(f"empty name in derived class {names!r}")
    return names


def display_name(names: list[str]) -> str:
    """QuPath's ``toString()`` of a class: ``["Tumor", "Positive"]`` -> ``"Tumor: Positive"``."""
    return DISPLAY_DELIMITER.join(names)


def is_ignored_class(names: list[str]) -> bool:
    """QuPath's ``isIgnoredClass``: the class's own (last) name ends with ``*``."""
    return bool(names) and names[-1].endswith("*")
