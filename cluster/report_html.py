"""HTML reports rendered from Jinja2 templates (cluster/templates/): one environment, autoescaped.

    render("run_report.html", title=..., rows=[...])   # -> the page as a string
    macro("charts.svg", "bar_chart")(...)              # -> one chart's SVG markup

Every page shares the style and the image check of the evaluation report (eval_report.CSS, SCRIPT);
values are escaped by the engine, so templates never build markup from strings by hand.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).resolve().parent / "templates"


@lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    from cocoedit.cluster.eval_report import CSS, SCRIPT

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a missing value is an error, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(css=CSS, script=SCRIPT)
    env.filters["num"] = _num
    return env


def _num(value: Any, digits: int = 4) -> str:
    """A number for a table cell: `n/a` for None or NaN, else `digits` significant digits."""
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def render(template: str, **context: Any) -> str:
    """The page of `template` (a file in cluster/templates/) filled with `context`."""
    return _environment().get_template(template).render(**context)


def macro(template: str, name: str) -> Any:
    """Macro `name` of `template` as a function returning markup (the reports' SVG charts)."""
    return getattr(_environment().get_template(template).module, name)
