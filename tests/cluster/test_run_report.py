"""The run report (report.png + report.html from metrics.jsonl) and the evaluation interval it draws."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from cocoedit.cluster.train.report import load_rows, panels, write_run_report


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.cells: list[str] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])

    def handle_data(self, data: str) -> None:
        self.text += data
        if data.strip():
            self.cells.append(data.strip())


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run<b>"
    (run / "images").mkdir(parents=True)
    rows = []
    for epoch in range(4):
        row = {
            "epoch": epoch,
            "reward/mean": 0.5 + 0.1 * epoch,
            "reward/pixel": 0.6,
            "reward/dropped_edits": 0.0,
            "loss/total": 1.0 - 0.25 * epoch,
            "loss/reg": 0.1,
            "time/sample_s": 2.0,
            "time/epoch_s": 5.0,
            "pixel/psnr": None,
            "learner/skip_reason": "none",
        }
        if epoch in (0, 3):
            row |= {"eval/reward": 0.4 + 0.1 * epoch, "eval/reward_ci95": 0.05, "eval/pixel": 0.7}
        rows.append(row)
    rows.append(
        {**rows[1], "reward/mean": 0.75}
    )  # a resumed run may log an epoch again: the later line counts
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    Image.new("RGB", (40, 20), "red").save(run / "images" / "epoch_00000.png")
    Image.new("RGB", (40, 20), "blue").save(run / "images" / "epoch_00003.png")
    return run


def test_report_holds_curves_eval_interval_and_last_validation_image(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    assert [r["epoch"] for r in load_rows(run)] == [0, 1, 2, 3] and load_rows(run)[1]["reward/mean"] == 0.75
    assert panels(load_rows(run)) == {
        "reward (training batch)": ["reward/mean", "reward/pixel"],
        "fixed evaluation set": ["eval/pixel", "eval/reward"],
        "loss terms": ["loss/reg", "loss/total"],
        "seconds per stage": ["time/epoch_s", "time/sample_s"],
    }
    png, html = write_run_report(run)
    assert (png, html) == (run / "report.png", run / "report.html")
    with Image.open(png) as im:
        assert im.size == (1100, 750)
    page = Page()
    page.feed(html.read_text())
    # self-contained: the curves and the last validation image (blue) inline
    assert len(page.imgs) == 2 and all(src.startswith("data:image/png;base64,") for src in page.imgs)
    assert "images/epoch_00003.png" in page.text
    assert "run<b>" in page.text and "<b>" not in html.read_text()  # escaped by the template engine
    # eval table: epoch, mean, interval mean -+ half-width
    i = page.cells.index("eval/reward")
    assert page.cells[i + 2 : i + 2 + 6] == ["0", "0.4", "0.35 .. 0.45", "3", "0.7", "0.65 .. 0.75"]
    j = page.cells.index("loss/total")
    assert page.cells[j + 1 : j + 4] == ["1", "0.25", "-0.75"]


def test_report_of_a_run_without_metrics_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pass the run directory"):
        write_run_report(tmp_path)


def test_charts_from_the_template_escape_names_and_scale_bars() -> None:
    from cocoedit.cluster.eval.report import bar_chart, scatter

    svg = str(bar_chart("delta <x>", {"a<b": 1.0, "none": None, "neg": -0.5}, width=360))
    assert "delta &lt;x&gt;" in svg and "a&lt;b" in svg and "<b>" not in svg
    # (width - label 150 - 60) * |v| / max|v|: 150 px for 1.0, 75 px for -0.5 (red); None is n/a
    assert 'width="150.0"' in svg and 'width="75.0" height="13" fill="#c0504d"' in svg and ">n/a<" in svg
    dots = str(scatter([(0.0, 1.0, "i<1>"), (2.0, 3.0, "j")], "x", "y"))
    assert dots.count("<circle") == 2 and "i&lt;1&gt;: (0, 1)" in dots
    assert "no items with both values" in str(scatter([], "x", "y"))
