"""A stand-in kubelet behind the fake API server: exec, attach and port-forward streams.

The HTTP core calls `serve_stream` after authentication and authorization. It speaks what
kubectl 1.32 speaks: WebSocket (v5/v4.channel.k8s.io; SPDY/3.1+portforward.k8s.io tunnelled
in binary messages) and SPDY/3.1 upgrades (v4.channel.k8s.io, portforward.k8s.io).
"""

from .negotiate import ALL_TRANSPORTS
from .podfs import DEFAULT_FILESYSTEMS, FilesystemRegistry, PodFilesystem
from .request import StreamRequest
from .serve import serve_stream

__all__ = [
    "ALL_TRANSPORTS",
    "DEFAULT_FILESYSTEMS",
    "FilesystemRegistry",
    "PodFilesystem",
    "StreamRequest",
    "serve_stream",
]
