"""User-facing errors: bad input or a refused output, each naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class OrgasegError(Exception):
    """An error the user can fix (bad input, refused output). The CLI prints it without a traceback."""


class InputFileError(OrgasegError):
    """A specific input file is missing, unreadable or malformed.

    The message always starts with the file's path so that the user knows which file to fix.
    """

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class OutputError(OrgasegError):
    """An output location cannot be used (not empty, inside an input folder, ...)."""
