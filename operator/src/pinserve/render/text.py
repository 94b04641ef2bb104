"""Text artifacts (TF Serving pbtxt configs) from jinja2 templates."""

from __future__ import annotations

from functools import cache
from typing import Any

import jinja2


@cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("pinserve.render", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # pbtxt and shell, never HTML
    )


def render_text(template: str, **values: Any) -> str:
    return environment().get_template(template).render(**values)
