"""Benchmark evaluation: generate edits with a policy, score them, report and compare runs."""
