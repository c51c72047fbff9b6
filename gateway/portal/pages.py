"""The portal's server-rendered HTML pages (jinja2, autoescaped, no JavaScript)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

_CODE = re.compile(r"`([^`]+)`")


def rich_text(text: str) -> Markup:
    """Escaped text where `backquoted` parts become <code> (operator-written hints)."""
    return Markup(_CODE.sub(lambda m: f"<code>{m.group(1)}</code>", str(escape(text))))


_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
_templates.filters["rich_text"] = rich_text


def render(template: str, **context: Any) -> str:
    return _templates.get_template(template).render(**context)
