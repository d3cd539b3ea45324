"""Logging set-up shared by the CLI and the album solutions."""

from __future__ import annotations

import logging
import os

#: Environment variable with the lowest level logged (``WARNING`` ...); analyze sets it for the
#: steps it runs on its workers, so their logs do not interleave with its own progress bar.
LOG_LEVEL_VARIABLE = "ORGASEG_LOG_LEVEL"


def configure_logging(verbose: bool = False) -> None:
    """Log INFO (DEBUG with ``verbose``; else the level in ``ORGASEG_LOG_LEVEL``) messages of
    orgaseg to stderr, one line each."""
    level = os.environ.get(LOG_LEVEL_VARIABLE, "").strip().upper()
    logging.basicConfig(
        level=logging.DEBUG if verbose else (level if level in ("DEBUG", "INFO", "WARNING", "ERROR")
                                             else logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Third-party libraries stay at WARNING so the log says what orgaseg read and wrote.
    for name in ("PIL", "tifffile", "matplotlib", "urllib3", "distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING)
