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


class Interrupted(BaseException):
    """The run was stopped by a signal (Ctrl-C = SIGINT, or SIGTERM from a scheduler or ``kill``).

    A BaseException, like KeyboardInterrupt, so that the ``except Exception`` of a batch loop
    (one bad image must not stop the others) never swallows it. The command line installs the
    handlers (:func:`orgaseg_core.cli.main`); ``exit_status`` is the shell's 128 + signal number.
    """

    def __init__(self, signum: int):
        import signal

        self.signum = int(signum)
        try:
            self.name = signal.Signals(self.signum).name
        except ValueError:
            self.name = f"signal {self.signum}"
        super().__init__(f"interrupted by {self.name}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class OptionError(OrgasegError):
    """An option value out of its range (``--tiles 0x2``, fractions that do not add up to 1,
    ``--prob-thresh 5``, ``--device tpu``): a usage error, exit status 2 like a value of the
    wrong type, with the same one-line ``error: ...`` message."""


def describe_os_error(exc: OSError) -> str:
    """One line for an error of the file system: ``<file>: <problem>`` (``No space left on
    device``, ``Read-only file system``, ``File name too long``, ``Is a directory``, ...)."""
    problem = exc.strerror or type(exc).__name__
    files = [f for f in (exc.filename, getattr(exc, "filename2", None)) if f]
    if files:
        return f"{files[0]}: {problem}" + (f" (-> {files[1]})" if len(files) > 1 else "")
    return f"{problem} ({exc})"
