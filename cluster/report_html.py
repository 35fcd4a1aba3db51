"""HTML reports rendered from Jinja2 templates (cluster/templates/): one environment, autoescaped.

    render("run_report.html", title=..., rows=[...])   # -> the page as a string
    macro("charts.svg", "bar_chart")(...)              # -> one chart's SVG markup

Every page shares one style (CSS) and one image check (SCRIPT: headless browsers and tests read how many
images failed to decode); values are escaped by the engine, so no page builds markup from strings.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).resolve().parent / "templates"

# The style of every self-contained report page (evaluation, curation, sweep).
CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}.pos{color:#0a7a2a}.neg{color:#b3261e}
.gallery td{vertical-align:top}.gallery img{width:128px;height:128px;image-rendering:pixelated}
.meta{font-size:12px;color:#555}svg{margin:6px 12px 6px 0;background:#fafafa;border:1px solid #eee}
.charts{display:flex;flex-wrap:wrap}table.info td{text-align:left}
"""

# Counts images that fail to decode, so a broken report is detectable (headless browsers, tests).
SCRIPT = """
<script>
window.addEventListener('load', function () {
  var imgs = document.images, broken = 0;
  for (var i = 0; i < imgs.length; i++) { if (!imgs[i].complete || imgs[i].naturalWidth === 0) broken++; }
  document.documentElement.setAttribute('data-images', String(imgs.length));
  document.documentElement.setAttribute('data-broken-images', String(broken));
});
</script>
"""


@lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

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
