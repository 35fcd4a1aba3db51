"""`cocoedit rate`: study design, storage, the HTTP API (bad requests, a killed server), simulated raters
whose preference model the report must recover, and the statistics on hand-computed cases.

Real parts: `cocoedit eval` runs of the synthetic task (target / source edits, no model needed), the
server as `cocoedit rate serve` in a subprocess on 127.0.0.1, raters talking HTTP.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import signal
import sqlite3
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cocoedit.cluster.cli import main as cli_main
from cocoedit.cluster.rate import analysis as an
from cocoedit.cluster.rate.design import load_design, plan_text, rater_queue
from cocoedit.cluster.rate.report import write_report
from cocoedit.cluster.rate.simulate import Oracle, rate_over_http
from cocoedit.cluster.rate.store import DB_FILE, Store
from tests.cluster.rate_helpers import Server, eval_runs, image_owner

NUM_ITEMS = 12


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return eval_runs(tmp_path_factory.mktemp("rate_runs"), NUM_ITEMS)


def _study(tmp_path: Path, runs: dict[str, Path], systems: dict[str, str], *extra: str) -> Path:
    out = tmp_path / "study"
    edits = [f"{name}={runs[run]}" for name, run in systems.items()]
    assert cli_main(["rate", "new", "--out", str(out), "--edits", *edits, *extra]) == 0
    return out


def _post(url: str, body: bytes, token: str = "", headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"X-Rater-Token": token, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _rows(study: Path) -> list[tuple]:
    with sqlite3.connect(study / DB_FILE) as db:
        return db.execute("SELECT * FROM answers ORDER BY id").fetchall()


def test_design_balances_systems_and_randomises_per_rater(tmp_path: Path, runs: dict[str, Path]) -> None:
    study = _study(
        tmp_path, runs, {"A": "source", "B": "half", "C": "target"}, "--repeats", "3", "--checks", "4"
    )
    design = load_design(study)
    assert len(design["pairs"]) == NUM_ITEMS * 3  # every item once per system pair
    counts = {s: sum(s in (p["a"], p["b"]) for p in design["pairs"]) for s in "ABC"}
    assert counts == {"A": 24, "B": 24, "C": 24}
    q1, q2 = rater_queue(design, "alice"), rater_queue(design, "bob")
    assert q1 == rater_queue(design, "alice") and q1 != q2
    for q in (q1, q2):
        assert len(q) == (len(design["pairs"]) + 3) * 3 + 4
        firsts = [t for t in q if t["kind"] == "pair"]
        assert sorted((t["ref"], t["criterion"]) for t in firsts) == sorted(
            (p["id"], c) for p in design["pairs"] for c in ("instruction", "consistency", "overall")
        )
        for rep in (t for t in q if t["kind"] == "repeat"):
            orig = next(t for t in firsts if (t["ref"], t["criterion"]) == (rep["ref"], rep["criterion"]))
            assert (rep["left"], rep["right"]) == (orig["right"], orig["left"]) and q.index(rep) > q.index(
                orig
            )
        assert sum(t["kind"] == "check" for t in q) == 4
    # sides are randomised: over two raters each system is on the left in 30-70% of its showings
    for s in "ABC":
        shown = [
            t for q in (q1, q2) for t in q if t["kind"] == "pair" and f"/{s}.png" in t["left"] + t["right"]
        ]
        assert 0.3 < sum(f"/{s}.png" in t["left"] for t in shown) / len(shown) < 0.7
    # the system names never reach a rater: image URLs are by queue position
    assert "97 independent ratings" in plan_text(design) and "385" in plan_text(design)


def test_bad_requests_get_4xx_and_leave_the_database_unchanged(tmp_path: Path, runs: dict[str, Path]) -> None:
    study = _study(tmp_path, runs, {"A": "source", "B": "target"}, "--max-items", "3")
    token = Store(study / DB_FILE).add_rater("alice")
    server = Server(study)
    try:
        url = server.url
        with urllib.request.urlopen(
            urllib.request.Request(f"{url}/api/next", headers={"X-Rater-Token": token})
        ) as r:
            task = json.loads(r.read())
        assert "A" not in json.dumps(task["images"]) and task["progress"] == {
            "answered": 0,
            "total": task["progress"]["total"],
        }
        good = {"pos": task["pos"], "task_id": task["task_id"], "choice": "left", "time_ms": 900}
        assert _post(f"{url}/api/answer", json.dumps(good).encode(), token)[0] == 200
        before = _rows(study)
        cases = {
            "replayed answer": (json.dumps(good).encode(), token, 409),
            "forged token": (json.dumps({**good, "pos": 1}).encode(), "x" * 24, 403),
            "unknown pair": (
                json.dumps({**good, "pos": 1, "task_id": "pair:p9999:instruction"}).encode(),
                token,
                404,
            ),
            "position out of range": (json.dumps({**good, "pos": 10_000}).encode(), token, 404),
            "skipping ahead": (
                json.dumps({**good, "pos": 5, "task_id": _task_id(study, "alice", 5)}).encode(),
                token,
                409,
            ),
            "bad choice": (json.dumps({**good, "pos": 1, "choice": "both"}).encode(), token, 422),
            "bad score": (json.dumps({**good, "pos": 1, "score": 9}).encode(), token, 422),
            "not json": (b"{pos: 1", token, 422),
            "oversized body": (json.dumps({**good, "pad": "x" * 5000}).encode(), token, 413),
        }
        for name, (body, tok, status) in cases.items():
            got, reply = _post(f"{url}/api/answer", body, tok)
            assert got == status, (name, got, reply)
            assert isinstance(reply["detail"], str) and reply["detail"], name
        assert _post(f"{url}/api/undo", b"{}", "forged")[0] == 403
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{url}/api/image/0/left?token=forged")
        assert e.value.code == 403
        assert _rows(study) == before
        # login by name is open on loopback, and resumes the same rater
        with urllib.request.urlopen(f"{url}/login", data=b"name=alice") as r:  # follows the redirect
            assert (
                r.status == 200
                and f"token={token}" in r.url
                and 'Rater <b id="rater">alice' in r.read().decode()
            )
        assert len(Store(study / DB_FILE).raters()) == 1
    finally:
        server.kill()


def _task_id(study: Path, rater: str, pos: int) -> str:
    t = rater_queue(load_design(study), rater)[pos]
    return f"{t['kind']}:{t['ref']}:{t['criterion']}"


def test_token_only_when_bound_beyond_loopback(tmp_path: Path, runs: dict[str, Path]) -> None:
    from fastapi.testclient import TestClient

    from cocoedit.cluster.rate.app import make_app

    study = _study(tmp_path, runs, {"A": "source", "B": "target"}, "--max-items", "2")
    client = TestClient(make_app(study, open_enrollment=False))
    r = client.post("/login", data={"name": "mallory"})
    assert r.status_code == 403 and "token" in r.json()["detail"]
    assert Store(study / DB_FILE).raters() == []
    token = Store(study / DB_FILE).add_rater("alice")
    assert client.get("/api/next", headers={"X-Rater-Token": token}).json()["done"] is False


def test_sigkill_mid_study_loses_no_acknowledged_answer(tmp_path: Path, runs: dict[str, Path]) -> None:
    study = _study(tmp_path, runs, {"A": "source", "B": "target"})
    token = Store(study / DB_FILE).add_rater("alice")
    server = Server(study)
    acked: list[dict] = []
    rng = random.Random(0)

    def rater() -> None:
        try:
            acked.extend(_answer_forever(server.url, token, rng, acked))
        except OSError:
            pass  # the server died under us: what was acknowledged is in `acked`

    t = threading.Thread(target=rater)
    t.start()
    while len(acked) < 15 and t.is_alive():
        threading.Event().wait(0.05)
    server.kill(signal.SIGKILL)
    t.join(timeout=60)
    assert server.proc.returncode == -signal.SIGKILL and len(acked) >= 15
    stored = {(r["pos"], r["choice"]) for r in Store(study / DB_FILE).answers()}
    assert {(a["pos"], a["choice"]) for a in acked} <= stored
    # a restarted server resumes the rater after the last stored answer
    server = Server(study)
    try:
        with urllib.request.urlopen(
            urllib.request.Request(f"{server.url}/api/next", headers={"X-Rater-Token": token})
        ) as r:
            assert json.loads(r.read())["pos"] == len(stored)
    finally:
        server.kill()


def _answer_forever(url: str, token: str, rng: random.Random, acked: list[dict]) -> list[dict]:
    def choose(task: dict, left: bytes, right: bytes, source: bytes) -> str:
        return rng.choice(["left", "right", "tie"])

    # rate_over_http returns the acked answers at the end; append as we go instead, so a kill keeps them
    from cocoedit.cluster.rate import simulate

    while True:
        got = simulate.rate_over_http(url, token, choose, max_answers=1)
        if not got:
            return []
        acked.extend(got)


def _recover(
    tmp_path: Path, runs: dict[str, Path], systems: dict[str, str], truth: dict, raters: int
) -> dict:
    """`raters` model raters plus one careless one rate the study at once over HTTP; the report."""
    study = _study(tmp_path, runs, systems, "--repeats", "3")
    owner = image_owner(study)
    store = Store(study / DB_FILE)
    server = Server(study)

    def model(seed: int, careless: bool = False):
        rng = random.Random(seed)

        def choose(task: dict, left: bytes, right: bytes, source: bytes) -> str:
            sl, sr = (owner[hashlib.sha256(b).hexdigest()] for b in (left, right))
            if careless:
                return rng.choice(["left", "right", "tie"])
            if sl.startswith("check:"):
                return "left" if sl == "check:good" else "right"
            s = truth.get(task["criterion"])
            if s is None:  # no preference on this criterion: mostly "tie", as a person would say
                return "tie" if rng.random() < 0.8 else rng.choice(["left", "right"])
            p_left = 1 / (1 + math.exp(s[sr] - s[sl]))
            return "left" if rng.random() < p_left else "right"

        return choose

    names = [f"r{k}" for k in range(raters)] + ["careless"]
    tokens = {n: store.add_rater(n) for n in names}
    threads = [
        threading.Thread(target=rate_over_http, args=(server.url, tokens[n], model(k, n == "careless")))
        for k, n in enumerate(names)
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    finally:
        server.kill()
    per_rater = (len(load_design(study)["pairs"]) + 3) * 3 + 4
    assert store.count() == len(names) * per_rater
    report = write_report(study, n_boot=300)
    assert report["raters"]["careless"]["excluded"] and report["included"] == names[:-1]
    st = report["strengths"]["consistency"]
    for s in systems:
        assert st[s]["lo"] <= truth["consistency"][s] <= st[s]["hi"], (s, st[s])
    for s in systems:
        assert (
            report["strengths"]["instruction"][s]["lo"] <= 0.0 <= report["strengths"]["instruction"][s]["hi"]
        )
    csv_rows = (study / "ratings.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + store.count() and "left_system" in csv_rows[0]
    assert "data:image/png;base64," in (study / "report.html").read_text()
    return report


def test_simulated_raters_preference_is_recovered(tmp_path: Path, runs: dict[str, Path]) -> None:
    """5 raters and a careless one at once, 294 answers over HTTP (~30 s on a loaded 2-core machine):
    on consistency system B is preferred over A 70% of the time (Bradley-Terry strength
    log(0.7/0.3) = 0.847), on instruction and overall neither (ties mostly). The report must put 0.847
    inside B's 95% interval with B above A, 0 inside the instruction interval, and exclude the careless
    rater. (60 consistency ratings of 12 items give an interval about +-0.5 wide: the ordering is
    resolved by the point estimate, not always by the interval.)"""
    truth = {"consistency": {"A": 0.0, "B": math.log(0.7 / 0.3)}}
    report = _recover(tmp_path, runs, {"A": "source", "B": "half"}, truth, raters=5)
    st = report["strengths"]["consistency"]
    assert st["B"]["strength"] > st["A"]["strength"] == 0.0  # the known ordering
    ab = next(r for r in report["wtl"] if r["criterion"] == "consistency")
    assert ab["a_share"] < 0.5 and ab["ties"] == 0 and ab["n"] == 5 * NUM_ITEMS


@pytest.mark.slow
def test_three_systems_ordering_is_recovered(tmp_path: Path, runs: dict[str, Path]) -> None:
    """Slow: ~65 s on a loaded 2-core machine (4 raters + a careless one, 605 answers over HTTP).
    Consistency P(B beats A) = 0.7, P(C beats A) = 0.85: the report orders C > B > A."""
    truth = {"consistency": {"A": 0.0, "B": math.log(0.7 / 0.3), "C": math.log(0.85 / 0.15)}}
    report = _recover(tmp_path, runs, {"A": "source", "B": "half", "C": "target"}, truth, raters=4)
    st = report["strengths"]["consistency"]
    assert st["C"]["strength"] > st["B"]["strength"] > st["A"]["strength"] == 0.0


def test_oracle_rater_and_scorer_agreement(tmp_path: Path, runs: dict[str, Path]) -> None:
    """The oracle (exact targets) prefers the target over the untouched source on instruction and
    overall for every item and ties consistency; the exact synthetic score then agrees 100%."""
    study = _study(tmp_path, runs, {"src": "source", "tgt": "target"}, "--max-items", "6", "--repeats", "1")
    store = Store(study / DB_FILE)
    server = Server(study)
    try:
        oracle = Oracle(load_design(study), study)
        rate_over_http(server.url, store.add_rater("oracle"), oracle)
    finally:
        server.kill()
    report = write_report(study, n_boot=100)
    assert all(not r["excluded"] and r["check_accuracy"] == 1.0 and r["repeat_agreement"] == 1.0
               for r in report["raters"].values())  # fmt: skip
    wtl = {r["criterion"]: r for r in report["wtl"]}
    assert wtl["instruction"]["b_wins"] == wtl["overall"]["b_wins"] == 6 and wtl["consistency"]["ties"] == 6
    syn = {r["criterion"]: r for r in report["scorers"] if r["scorer"] == "synthetic"}
    assert syn["instruction"]["accuracy"] == 1.0 and syn["instruction"]["decided"] == 6


def test_bradley_terry_and_agreement_on_hand_computed_cases() -> None:
    # two systems, a preferred 30 times, b 10 times, 10 ties: a's share 0.7, strength of b -log(0.7/0.3)
    rows = [{"rater": "r", "pair": f"p{k}", "item": f"i{k % 5}", "criterion": "c", "a": "a", "b": "b", "y_a": y}
            for k, y in enumerate([1.0] * 30 + [0.0] * 10 + [0.5] * 10)]  # fmt: skip
    bt = an.bradley_terry(["a", "b"], rows, n_boot=50)
    assert bt["a"]["strength"] == 0.0 and bt["b"]["strength"] == pytest.approx(-math.log(0.7 / 0.3), abs=0.01)
    assert an.wtl(rows)[0] == {"criterion": "c", "a": "a", "b": "b", "a_wins": 30, "ties": 10, "b_wins": 10,
                               "n": 50, "a_share": 0.7}  # fmt: skip
    # two raters who always agree: alpha 1; one of them flipped on every question: alpha < 0
    same = [{**r, "rater": name} for r in rows[:20] + rows[40:] for name in ("x", "y")]
    assert an.alpha(same, n_boot=20)["alpha"] == pytest.approx(1.0)
    flipped = [{**r, "rater": "x"} for r in rows] + [{**r, "rater": "y", "y_a": 1 - r["y_a"]} for r in rows]
    assert an.alpha(flipped, n_boot=20)["alpha"] < 0
    # majority and a scorer that is right on 2 of 3 decided pairs, tied on none
    maj_rows = [{"rater": n, "pair": p, "item": p, "criterion": "instruction", "a": "a", "b": "b", "y_a": y}
                for p, ys in {"i1": (1, 1, 0), "i2": (0, 0, 1), "i3": (1, 0, 0.5), "i4": (0, 0, 0)}.items()
                for n, y in zip("xyz", ys, strict=True)]  # fmt: skip
    design = {"criteria": [{"name": "instruction"}],
              "scores": {"a": {"i1": {"s": 2.0}, "i2": {"s": 1.0}, "i3": {"s": 0.0}, "i4": {"s": 3.0}},
                         "b": {"i1": {"s": 1.0}, "i2": {"s": 2.0}, "i3": {"s": 0.0}, "i4": {"s": 1.0}}}}  # fmt: skip
    (res,) = an.scorer_agreement(maj_rows, design, n_boot=50)
    assert (res["pairs"], res["decided"]) == (4, 3)
    assert res["accuracy"] == pytest.approx(2 / 3)  # i1 right, i2 right, i4 wrong; i3 is a human tie
    assert np.isfinite(res["tau"])
    from scipy.stats import kendalltau

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, 40).astype(float), rng.integers(-2, 3, 40).astype(float)  # many ties
    assert an.kendall_tau_b(x, y) == pytest.approx(kendalltau(x, y).statistic, abs=1e-12)
    assert math.isnan(an.kendall_tau_b(np.ones(5), np.arange(5.0)))
