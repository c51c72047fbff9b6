"""YAML documents that remember where each value came from (file and line)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file, with its location."""

    file: str
    line: int | None
    where: str
    message: str

    def __str__(self) -> str:
        at = f"{self.file}:{self.line}" if self.line else self.file
        return f"{at}: {self.where}: {self.message}" if self.where else f"{at}: {self.message}"


class LocatedError(ValueError):
    """A YAML file that cannot be read as data, with the line at fault."""

    def __init__(self, file: str, line: int | None, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}" if line else f"{file}: {message}")
        self.problem = Problem(file, line, "", message)


class LocatedDocument:
    """A parsed YAML mapping plus a map from key paths to line numbers."""

    def __init__(self, file: str, data: Any, lines: dict[tuple, int]) -> None:
        self.file = file
        self.data = data
        self._lines = lines

    def line_of(self, path: tuple) -> int | None:
        """The line of the deepest known prefix of `path` (1-based)."""
        path = tuple(path)
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return self._lines.get((), 1)

    def problem(self, path: tuple, message: str) -> Problem:
        where = ".".join(str(p) for p in path)
        return Problem(self.file, self.line_of(path), where, message)


#: libyaml's parser when PyYAML was built with it (the same nodes and marks, ~5x faster)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _value(node: yaml.Node) -> Any:
    """What `yaml.safe_load` makes of `node` (its tag was resolved when it was composed).
    Constructed directly: serializing each scalar back to text and loading it again cost
    ~0.3 ms a scalar, 13 s for a config file with 10,000 tenants (issue 16)."""
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def _walk(node: yaml.Node, path: tuple, lines: dict[tuple, int], file: str) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _value(key_node)
            if key in out:  # YAML says keys are unique; silently keeping the last loses rules
                where = ".".join(str(p) for p in (*path, key))
                raise LocatedError(
                    file,
                    key_node.start_mark.line + 1,
                    f"{where}: key given twice (first at line {lines[(*path, key)]})",
                )
            lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _walk(value_node, (*path, key), lines, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, (*path, i), lines, file) for i, item in enumerate(node.value)]
    return _value(node)


def read_yaml(path: Path, *, max_bytes: int = 1 << 20) -> LocatedDocument:
    """Parse one YAML document; raise `ValueError` with a located message on bad input."""
    raw = path.read_bytes()
    if len(raw) > max_bytes:
        raise ValueError(f"{path}: file is larger than {max_bytes} bytes")
    try:
        node = yaml.compose(raw.decode("utf-8"), Loader=_LOADER)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise LocatedError(
            str(path),
            mark.line + 1 if mark else None,
            f"invalid YAML: {getattr(exc, 'problem', exc)}",
        ) from None
    lines: dict[tuple, int] = {}
    data = _walk(node, (), lines, str(path)) if node is not None else {}
    return LocatedDocument(str(path), data, lines)
