"""The resize channel: a stream of JSON `{"Width": W, "Height": H}` objects."""

from __future__ import annotations

import json

from .procio import ProcessIO


class ResizeDecoder:
    """Feeds complete size objects to the process; partial JSON waits for more bytes."""

    def __init__(self, io: ProcessIO) -> None:
        self._io = io
        self._buffer = ""
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> None:
        self._buffer += data.decode(errors="replace")
        while self._buffer.strip():
            text = self._buffer.lstrip()
            try:
                size, end = self._decoder.raw_decode(text)
            except json.JSONDecodeError:
                self._buffer = text
                return
            self._buffer = text[end:]
            if isinstance(size, dict):
                self._io.resize(int(size.get("Width", 0)), int(size.get("Height", 0)))
