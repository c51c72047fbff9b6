"""How this installation of vgate was built: whether the request path runs as modules mypyc
compiled (the image, `VGATE_COMPILE=1`) or as plain Python (`pip install -e .`)."""

from __future__ import annotations

import importlib.machinery
import importlib.util

from gateway import __version__

#: a module every request runs through; setup.py compiles it with the rest of the request path
_PROBE = "gateway.pipeline"


def request_path_build() -> str:
    """ "compiled" when the request path is a native extension, else "interpreted"."""
    spec = importlib.util.find_spec(_PROBE)
    origin = spec.origin if spec is not None else None
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return "compiled" if origin and origin.endswith(suffixes) else "interpreted"


def describe() -> str:
    """One line for the start-up log and `vgate --version`."""
    return f"vgate {__version__} (request path {request_path_build()})"
