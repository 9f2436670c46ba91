"""The one logging set-up of the command-line entry points and the app (library code only logs).

``setup_logging(verbose)`` configures the root logger on stderr (once per process, like
:func:`logging.basicConfig`) and sets the chatty third-party libraries' levels from the same
``-v`` count:

=========  ===================  ==========================  ==========================
verbose    our loggers          ML libraries (transformers  web plumbing (httpx,
                                 huggingface_hub, ...)       gradio, uvicorn, ...)
=========  ===================  ==========================  ==========================
0          ``level``            errors only                 warnings and errors
1          info (or ``level``)  as ours                     warnings and errors
2+         debug                as ours                     as ours
=========  ===================  ==========================  ==========================

Errors of the libraries still surface as exceptions; at verbose 0 their retries and notes stay
out of the way.
"""
from __future__ import annotations

import logging
import sys

ML_LIBRARIES: tuple[str, ...] = ("transformers", "huggingface_hub", "bitsandbytes", "accelerate")
WEB_LIBRARIES: tuple[str, ...] = ("httpx", "urllib3", "gradio", "gradio_client", "uvicorn",
                                  "uvicorn.error", "uvicorn.access")
FORMAT = "%(levelname)s %(name)s: %(message)s"
TIMESTAMPED_FORMAT = "%(asctime)s " + FORMAT


def verbosity_level(verbose: int, level: int = logging.WARNING) -> int:
    """The root level for ``-v`` given ``verbose`` times: ``level``, then info, then debug."""
    if verbose <= 0:
        return level
    return min(level, logging.INFO) if verbose == 1 else logging.DEBUG


def setup_logging(verbose: int = 0, *, level: int = logging.WARNING, timestamps: bool = False) -> None:
    """Configure logging for a command-line entry point (see the module docstring).

    Args:
        verbose: how many ``-v`` were given.
        level: the root level without ``-v`` (commands: warnings; the app: info).
        timestamps: prefix each line with the time (long-running servers).
    """
    verbose = verbose or 0
    logging.basicConfig(level=verbosity_level(verbose, level), stream=sys.stderr,
                        format=TIMESTAMPED_FORMAT if timestamps else FORMAT)
    for name in ML_LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR if verbose < 1 else logging.NOTSET)
    for name in WEB_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING if verbose < 2 else logging.NOTSET)


__all__ = ["ML_LIBRARIES", "WEB_LIBRARIES", "setup_logging", "verbosity_level"]
