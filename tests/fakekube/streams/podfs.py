"""Each pod's in-memory filesystem, keyed by (namespace, pod)."""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass, field


class FsError(Exception):
    """An errno-like failure; `str()` is the strerror text (e.g. 'No such file or directory')."""


@dataclass
class Node:
    is_dir: bool
    data: bytes = b""
    mode: int = 0o644
    mtime: float = field(default_factory=time.time)


def normalize(path: str, cwd: str = "/") -> str:
    """Absolute, normalised path ('..' never climbs above '/')."""
    joined = posixpath.normpath(posixpath.join(cwd, path))
    return "/" + joined.lstrip("/")


class PodFilesystem:
    """Files and directories only; enough for ls, cat, test and tar."""

    def __init__(self, hostname: str) -> None:
        self._nodes: dict[str, Node] = {"/": Node(True, mode=0o755)}
        for folder in ("/etc", "/root", "/tmp", "/var", "/app"):
            self.mkdir(folder)
        self.write("/etc/hostname", f"{hostname}\n".encode())
        self.write("/etc/os-release", b'NAME="fakekube"\nID=fakekube\n')

    def node(self, path: str) -> Node | None:
        return self._nodes.get(normalize(path))

    def is_dir(self, path: str) -> bool:
        node = self.node(path)
        return node is not None and node.is_dir

    def is_file(self, path: str) -> bool:
        node = self.node(path)
        return node is not None and not node.is_dir

    def read(self, path: str) -> bytes:
        node = self.node(path)
        if node is None:
            raise FsError("No such file or directory")
        if node.is_dir:
            raise FsError("Is a directory")
        return node.data

    def write(self, path: str, data: bytes, mode: int = 0o644, mtime: float | None = None) -> None:
        path = normalize(path)
        parent = self.node(posixpath.dirname(path))
        if parent is None or not parent.is_dir:
            raise FsError("No such file or directory")
        if self.is_dir(path):
            raise FsError("Is a directory")
        self._nodes[path] = Node(False, data, mode, time.time() if mtime is None else mtime)

    def mkdir(self, path: str, parents: bool = True, mode: int = 0o755) -> None:
        path = normalize(path)
        node = self._nodes.get(path)
        if node is not None:
            if not node.is_dir:
                raise FsError("File exists")
            return
        parent = posixpath.dirname(path)
        if not self.is_dir(parent):
            if not parents or self.is_file(parent):
                raise FsError("No such file or directory")
            self.mkdir(parent, parents=True)
        self._nodes[path] = Node(True, mode=mode)

    def listdir(self, path: str) -> list[str]:
        path = normalize(path)
        if not self.is_dir(path):
            raise FsError("Not a directory" if path in self._nodes else "No such file or directory")
        prefix = path.rstrip("/") + "/"
        return sorted(
            p[len(prefix) :] for p in self._nodes if p != path and posixpath.dirname(p) == path
        )

    def walk(self, path: str) -> list[str]:
        """`path` and everything below it, parents before children."""
        path = normalize(path)
        if path not in self._nodes:
            raise FsError("No such file or directory")
        prefix = path.rstrip("/") + "/"
        return sorted(p for p in self._nodes if p == path or p.startswith(prefix))


class FilesystemRegistry:
    """Lazily creates one filesystem per pod; `clear()` forgets them all."""

    def __init__(self) -> None:
        self._pods: dict[tuple[str, str], PodFilesystem] = {}

    def get(self, namespace: str, pod: str) -> PodFilesystem:
        key = (namespace, pod)
        if key not in self._pods:
            self._pods[key] = PodFilesystem(pod)
        return self._pods[key]

    def clear(self) -> None:
        self._pods.clear()


DEFAULT_FILESYSTEMS = FilesystemRegistry()
