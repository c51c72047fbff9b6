"""The fake TCP service listening on every port of every pod."""

from __future__ import annotations


class UpperEcho:
    """Answers each chunk upper-cased; the first answer is prefixed with `PORT <n>\\n`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._greeted = False

    def respond(self, chunk: bytes) -> bytes:
        reply = chunk.upper()
        if not self._greeted:
            self._greeted = True
            reply = f"PORT {self.port}\n".encode() + reply
        return reply
