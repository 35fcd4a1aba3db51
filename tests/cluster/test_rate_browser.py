"""The rating page in a real browser: Debian's chromium driven by Selenium through chromedriver.

A rater logs in by name, answers with the arrow keys, a key for tie and a click, undoes, zooms and
toggles the source, leaves, comes back to the same place, and finishes the study; the database then
holds exactly those answers. Skips when chromium or chromium-driver is not installed (.ci/run installs
both).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cocoedit.cluster.cli import main as cli_main
from cocoedit.cluster.rate.store import DB_FILE, Store
from tests.cluster.rate_helpers import Server, eval_runs


def _driver():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip(
            "needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver_path))


def test_a_rater_rates_a_study_with_keys_and_clicks(tmp_path: Path) -> None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    runs = eval_runs(tmp_path, 2)
    study = tmp_path / "study"
    edits = [f"untouched={runs['source']}", f"perfect={runs['target']}"]
    argv = ["rate", "new", "--out", str(study), "--edits", *edits, "--repeats", "1", "--checks", "2"]
    assert cli_main(argv) == 0
    total = (2 + 1) * 3 + 2
    server = Server(study)
    driver = _driver()
    try:

        def login() -> None:
            driver.get(server.url + "/")
            driver.find_element(By.ID, "name").send_keys("alice")
            driver.find_element(By.ID, "start").click()

        # A page that is still loading replaces its body: a stale or missing element means "not yet"
        transient = (StaleElementReferenceException, NoSuchElementException)

        def at(pos: int) -> None:
            body = lambda d: d.find_element(By.TAG_NAME, "body")  # noqa: E731
            WebDriverWait(driver, 30, ignored_exceptions=transient).until(
                lambda d: (
                    body(d).get_attribute("data-state") == "ready"
                    and body(d).get_attribute("data-pos") == str(pos)
                )
            )

        def key(k: str) -> None:
            ActionChains(driver).send_keys(k).perform()

        login()
        at(0)
        assert driver.execute_script("return document.getElementById('left').naturalWidth") > 0
        page = driver.page_source + "".join(
            driver.find_element(By.ID, i).get_attribute("src") for i in ("left", "right")
        )
        assert "untouched" not in page and "perfect" not in page  # no system names reach the rater
        key(Keys.ARROW_LEFT)
        at(1)
        key(Keys.ARROW_RIGHT)
        at(2)
        key("t")
        at(3)
        key("u")  # undo the tie
        at(2)
        driver.find_element(By.ID, "btn-left").click()
        at(3)
        key("4")
        driver.find_element(By.ID, "btn-right").click()
        at(4)
        assert driver.find_element(By.ID, "progress").text == f"4 / {total}"
        left_src = driver.find_element(By.ID, "left").get_attribute("src")
        key("s")  # the source in place of both edits
        assert driver.find_element(By.ID, "left").get_attribute("src") == driver.find_element(
            By.ID, "source"
        ).get_attribute("src")
        key("s")
        assert driver.find_element(By.ID, "left").get_attribute("src") == left_src
        key("z")
        assert "zoom" in driver.find_element(By.TAG_NAME, "body").get_attribute("class")

        # leave and come back: the same rater resumes at the same task
        driver.get("about:blank")
        login()
        at(4)
        for pos in range(4, total):
            at(pos)
            key("a")
        WebDriverWait(driver, 30, ignored_exceptions=transient).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done"
        )
        assert driver.find_element(By.ID, "done").is_displayed()
    finally:
        driver.quit()
        server.kill()

    rows = Store(study / DB_FILE).answers(include_undone=True)
    active = [(r["pos"], r["choice"], r["score"]) for r in rows if not r["undone"]]
    assert active[:4] == [(0, "left", None), (1, "right", None), (2, "left", None), (3, "right", 4)]
    assert [(r["pos"], r["choice"]) for r in rows if r["undone"]] == [(2, "tie")]
    assert len(active) == total and [p for p, _, _ in active] == list(range(total))
    assert all(r["time_ms"] >= 0 for r in rows) and {r["rater"] for r in rows} == {"alice"}
