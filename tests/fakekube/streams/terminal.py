"""A cooked-mode terminal line discipline: echo, ICRNL, ONLCR, erase, ^C and ^D."""

from __future__ import annotations

from dataclasses import dataclass, field

CTRL_C, CTRL_D, BACKSPACE, DELETE = 0x03, 0x04, 0x08, 0x7F


@dataclass
class Cooked:
    """What a burst of keystrokes produced."""

    echo: bytes = b""
    lines: list[bytes] = field(default_factory=list)
    interrupt: bool = False
    eof: bool = False


def onlcr(data: bytes) -> bytes:
    """Output post-processing: newline becomes CR LF."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class LineDiscipline:
    """Collects keystrokes into lines the process reads, echoing them like a tty does."""

    def __init__(self) -> None:
        self._line = bytearray()

    def feed(self, data: bytes) -> Cooked:
        out = Cooked()
        echo = bytearray()
        for byte in data:
            if byte == CTRL_C:
                echo += b"^C\r\n"
                self._line.clear()
                out.interrupt = True
            elif byte == CTRL_D:
                if self._line:
                    out.lines.append(bytes(self._line))
                    self._line.clear()
                else:
                    out.eof = True
            elif byte in (BACKSPACE, DELETE):
                if self._line:
                    self._line.pop()
                    echo += b"\b \b"
            elif byte in (0x0D, 0x0A):
                out.lines.append(bytes(self._line) + b"\n")
                self._line.clear()
                echo += b"\r\n"
            else:
                self._line.append(byte)
                echo.append(byte)
        out.echo = bytes(echo)
        return out
