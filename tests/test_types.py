"""The type checker guards config access: a key that does not exist is a mypy error, not a crash at run time.

`.ci/run` runs `.venv/bin/mypy` over the packages before pytest, so mypy's cache is warm here: one more run
over the packages plus a small module costs about what checking the module alone does (~7 s of CPU,
measured on a loaded 2-core machine). With no cache (pytest before any mypy run) it takes minutes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The bug of issue 25 (cluster/curate read the judge's resources where they are not: they live under
# rewards.mllm.scaling), a misspelt key, and the correct accesses, which must stay silent.
SNIPPET = """\
from cocoedit.cluster.config import Config


def judge_resources(cfg: Config) -> tuple[float, float]:
    judge = cfg.rewards.mllm
    return judge.cpus_per_replica, judge.gpus_per_replica


def learning_rate(cfg: Config) -> float:
    return cfg.learner.lrr


def correct(cfg: Config) -> tuple[float, float, float]:
    scaling = cfg.rewards.mllm.scaling
    return scaling.cpus_per_replica, scaling.gpus_per_replica, cfg.learner.lr
"""


def test_mypy_reports_config_keys_that_do_not_exist_and_none_in_the_packages(tmp_path: Path) -> None:
    module = tmp_path / "uses_config.py"
    module.write_text(SNIPPET)
    # the project's settings and cache (cwd: the repository root, where the CI run left .mypy_cache);
    # the packages and the module in one run (mypy takes -p with -m, not with a file path)
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "-p", "cocoedit"]
    run = subprocess.run(
        [*cmd, "-m", "uses_config"],
        cwd=ROOT,
        env={**os.environ, "MYPYPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    out = run.stdout + run.stderr
    errors = re.findall(r"^(.+?):(\d+): error: (.*)  \[([a-z-]+)\]$", out, re.MULTILINE)
    assert run.returncode == 1, out
    # every error is the module's: the packages have none
    assert [(Path(f).name, line, msg, code) for f, line, msg, code in errors] == [
        ("uses_config.py", "6", '"JudgeConfig" has no attribute "cpus_per_replica"', "attr-defined"),
        ("uses_config.py", "6", '"JudgeConfig" has no attribute "gpus_per_replica"', "attr-defined"),
        ("uses_config.py", "10", '"LearnerConfig" has no attribute "lrr"; maybe "lr"?', "attr-defined"),
    ], out
    assert "Found 3 errors in 1 file" in out, out


def test_ci_runs_the_type_checker() -> None:
    steps = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ".venv/bin/mypy" in steps
    assert steps.index(".venv/bin/mypy") < next(i for i, s in enumerate(steps) if "pytest" in s)
