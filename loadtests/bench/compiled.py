"""vgate as the image ships it: a copy of this working tree with the request path compiled
by mypyc (`VGATE_COMPILE=1`, `gateway.build_info.REQUEST_PATH`), for the bench and the tests that
run the compiled build. The wheel is built as the Dockerfile builds it (`pip wheel`) and
unpacked over the copy; `wheel()` is that wheel.

A build is reused while its inputs are unchanged: the key hashes every file under
`gateway/`, `setup.py`, `pyproject.toml`, the mypy version and the Python version. The rest of
the tree (tests, loadtests, policies, deploy) is copied again on every use, so the copy runs
this checkout's tests against its compiled gateway.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from loadtests.bench.stack import REPO_ROOT

BUILD_TIMEOUT = 1200  # seconds: mypyc + gcc over the request path take ~70 s on 2 cores
KEEP_BUILDS = 3
WHEEL_DIR = ".wheel"
IDLE_BEFORE_PRUNE = 6 * 3600  # seconds since a build's last use before it may go
#: how a build is made: a new recipe is a new build
_RECIPE = "pip wheel, unpacked"
#: what the build reads: a change to any of these is a new build
_INPUTS = ("gateway", "setup.py", "pyproject.toml")


def missing_toolchain() -> str | None:
    """Why this machine cannot build the compiled request path (one line), or None: mypyc's
    C needs the compiler Python was built with and Python's headers."""
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")[0]
    if shutil.which(cc) is None:
        return f"the compiled build needs a C compiler ({cc} is not installed)"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        return f"the compiled build needs Python's headers ({headers} is missing)"
    return None


def cache_root() -> Path:
    """Where builds are kept: $VGATE_BUILD_CACHE, else ~/.cache/vgate/compiled."""
    explicit = os.environ.get("VGATE_BUILD_CACHE")
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vgate" / "compiled"


def tree_files(source: Path) -> list[str]:
    """The working tree's files (tracked, and untracked but not ignored), relative paths."""
    out = subprocess.run(
        ["git", "-C", str(source), "ls-files", "-z", "-co", "--exclude-standard"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    return sorted(p for p in out.decode().split("\0") if p and (source / p).is_file())


def build_key(source: Path, files: list[str]) -> str:
    """A digest of everything the compiled gateway depends on."""
    import mypy.version

    digest = hashlib.sha256()
    digest.update(f"{_RECIPE}|{mypy.version.__version__}|{sys.version}".encode())
    for rel in files:
        if rel.split("/", 1)[0] in _INPUTS:
            digest.update(rel.encode() + b"\0" + (source / rel).read_bytes() + b"\0")
    return digest.hexdigest()[:20]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process building the same key waits
        yield


def _copy(source: Path, dest: Path, files: list[str], *, gateway_too: bool) -> None:
    for rel in files:
        if not gateway_too and rel.split("/", 1)[0] in _INPUTS:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, target)


def build(source: Path = REPO_ROOT, log: Callable[[str], None] = print) -> Path:
    """The root of a compiled copy of `source` (use it as cwd and PYTHONPATH), built now or
    reused. Raises RuntimeError with the compiler's output when the build fails."""
    files = tree_files(source)
    key = build_key(source, files)
    root = cache_root()
    dest = root / key
    with _locked(root / f"{key}.lock"):
        if not (dest / ".built").exists():
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            _copy(source, dest, files, gateway_too=True)
            log(f"compiling the request path with mypyc into {dest} ...")
            t0 = time.monotonic()
            # the image's build: `pip wheel` with VGATE_COMPILE=1 (isolated, like the
            # Dockerfile's build stage), then the wheel unpacked over the copy
            result = subprocess.run(
                [
                    *(sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"),
                    *("--no-deps", "--wheel-dir", str(dest / WHEEL_DIR), "."),
                ],
                cwd=dest,
                env={**os.environ, "VGATE_COMPILE": "1"},
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
            )
            if result.returncode != 0:
                tail = (result.stdout + result.stderr)[-4000:]
                raise RuntimeError(f"the mypyc build failed (exit {result.returncode}):\n{tail}")
            with zipfile.ZipFile(wheel(dest)) as built:
                built.extractall(dest)
            for leftover in ("build", "vgate.egg-info"):  # setuptools' in-tree build
                shutil.rmtree(dest / leftover, ignore_errors=True)
            (dest / ".built").write_text(f"{time.monotonic() - t0:.0f}\n")
            log(f"compiled in {time.monotonic() - t0:.0f}s")
        _copy(source, dest, files, gateway_too=False)
        (dest / ".built").touch()  # last used: what pruning keeps
    _prune(root, keep=dest)
    return dest


def wheel(root: Path) -> Path:
    """The wheel a build made (what the image installs)."""
    return next((root / WHEEL_DIR).glob("vgate-*.whl"))


def compiled_modules(root: Path) -> list[str]:
    """The gateway modules of a build that are native extensions (dotted names)."""
    found = []
    for path in sorted((root / "gateway").rglob("*.so")):
        rel = path.relative_to(root).with_suffix("")
        found.append(".".join(rel.parts).split(".cpython")[0])
    return found


def _prune(root: Path, keep: Path) -> None:
    """Drop builds beyond the KEEP_BUILDS most recently used that nobody used for
    IDLE_BEFORE_PRUNE seconds (another session may be running from one), with their lock
    files; never `keep`."""
    builds = sorted(
        (p for p in root.iterdir() if (p / ".built").exists()),
        key=lambda p: (p / ".built").stat().st_mtime,
        reverse=True,
    )
    for old in builds[KEEP_BUILDS:]:
        if old == keep or time.time() - (old / ".built").stat().st_mtime < IDLE_BEFORE_PRUNE:
            continue
        shutil.rmtree(old, ignore_errors=True)
        (root / f"{old.name}.lock").unlink(missing_ok=True)
