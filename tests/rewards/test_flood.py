"""Limits before memory: a flood of maximum-size requests against `cocoedit serve pixel` (a subprocess)
stays within the bound the server's limits set, and its memory goes back to the system afterwards.
(~20 s; the client holds ~1 GB while it sends. The numbers for 12 x 200 MB: bench/pixel_flood.py.)"""

from __future__ import annotations

from bench.pixel_flood import ROOT, measure


def test_twelve_maximum_size_requests_stay_within_the_bound_and_rss_returns_to_idle() -> None:
    m = measure(ROOT, requests=12, message_mb=64, concurrent=2)
    assert m["served"] >= 1 and m["served"] + m["refused"] == 12 and m["other"] == 0, m
    # idle + max_concurrent_calls x 3 x message + 64 MB = 518 MB here; before the fix: 1658 MB peak
    assert m["peak"] < m["bound"], m
    assert m["after"] < m["idle"] + 32, m  # before the fix: 768 MB above idle stayed held
