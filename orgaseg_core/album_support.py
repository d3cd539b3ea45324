"""What every album solution's ``run`` does around its step function.

Imported only inside ``run`` (album reads ``solution.py`` before the environment exists).
"""

from __future__ import annotations

import re
import sys
from typing import Callable, Iterable

from .common.errors import OptionError, OrgasegError, describe_os_error
from .common.logs import configure_logging


def run_step(call: Callable[[], object]) -> None:
    """Run ``call`` (a step function with its arguments bound) the way a solution should.

    Logs orgaseg's INFO lines once (album's own logger must not repeat them through the root
    handler), prints the result's ``summary()``, and turns an :class:`OrgasegError` (a problem
    the user can fix) into one ``ERROR: <file>: <problem>`` line and exit status 1 instead of a
    traceback.
    """
    from album.runner.album_logging import get_active_logger

    configure_logging()
    get_active_logger().propagate = False
    try:
        result = call()
    except OrgasegError as exc:
        print(f"ERROR: {album_option_names(str(exc), _argument_names())}", file=sys.stderr, flush=True)
        # an option value out of range is a usage error, like a value of the wrong type
        sys.exit(2 if isinstance(exc, OptionError) else 1)
    except OSError as exc:  # the file system refused (read-only, full, name too long, ...)
        print(f"ERROR: {describe_os_error(exc)}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(result.summary(), flush=True)


def _argument_names() -> list[str]:
    """The argument names of the running solution (album's parsed arguments)."""
    try:
        from album.runner.api import get_args

        return list(vars(get_args()))
    except Exception:  # not inside an album run
        return []


def album_option_names(message: str, names: Iterable[str]) -> str:
    """``message`` with the command line's option names (``--model-out``) replaced by the
    solution's snake_case argument names (``--model_out``) among ``names``: orgaseg's errors name
    options as the ``orgaseg`` command spells them, an album user types the solution's names."""
    for name in sorted((n for n in names if "_" in n), key=len, reverse=True):
        cli = "--" + name.replace("_", "-")
        message = re.sub(r"(?<![\w-])" + re.escape(cli) + r"(?![\w-])", "--" + name, message)
    return message
