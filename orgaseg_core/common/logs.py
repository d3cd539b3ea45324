"""Logging set-up shared by the CLI and the album solutions."""

from __future__ import annotations

import logging


def configure_logging(verbose: bool = False) -> None:
    """Log INFO (DEBUG with ``verbose``) messages of orgaseg to stderr, one line each."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Third-party libraries stay at WARNING so the log says what orgaseg read and wrote.
    for name in ("PIL", "tifffile", "matplotlib", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
