"""Open a self-contained HTML report in headless Chromium, as a person would, for the report tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def open_in_chromium(page: Path) -> str:
    """The DOM of `page` after its load handlers ran (the reports' script sets data-images and
    data-broken-images on <html>); fails on a browser error or an uncaught script error, skips the test
    when no Chromium is installed."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("no chromium binary (apt-get install -y chromium); the DOM is checked by html.parser")
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--virtual-time-budget=3000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    uncaught = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln and "Uncaught" in ln]
    assert not uncaught, uncaught
    return proc.stdout
