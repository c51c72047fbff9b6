"""What the HTTP core hands over for an exec/attach/portforward upgrade."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StreamRequest:
    kind: str  # "exec" | "attach" | "portforward"
    namespace: str
    pod: str
    query: list[tuple[str, str]]  # decoded query params in order; `command` repeated for exec
    headers: list[tuple[str, str]]  # request headers, names lower-cased, as received

    def params(self, name: str) -> list[str]:
        """All query values for `name`, in order."""
        return [value for key, value in self.query if key == name]

    def flag(self, name: str) -> bool:
        """A boolean query parameter as the API server parses it (`true`/`1`)."""
        values = self.params(name)
        return bool(values) and values[-1].lower() in ("true", "1")

    def header_values(self, name: str) -> list[str]:
        """Every comma-separated value of every `name` header, stripped, in order."""
        out: list[str] = []
        for key, value in self.headers:
            if key == name:
                out.extend(part.strip() for part in value.split(",") if part.strip())
        return out

    def header(self, name: str) -> str:
        """The first `name` header, or ''."""
        return next((value for key, value in self.headers if key == name), "")
