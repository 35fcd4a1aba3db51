"""Everything that can be checked when the config is loaded is, with one line naming the fix, before Ray
or torch is imported (issue 29: each of these failed late, after Ray started, or not at all); and
secrets in config values never reach config.yaml, error messages or the trackers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cocoedit.cluster.config import ConfigError, dump_config, load_config, redacted_dict
from cocoedit.cluster.redact import redact_text, redact_tree
from cocoedit.cluster.train.resume import check_config
from cocoedit.cluster.train.runlog import RunLog, flat_params

HEAVY = ("ray", "torch", "deepspeed", "vllm", "diffusers")
CHILD = (
    "import sys; from cocoedit.cluster.cli import main; rc = main(sys.argv[1:]); "
    f"print('imported:', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr); sys.exit(rc)"
)


@pytest.mark.parametrize(
    "override, says",
    [
        (
            "rewards.client.max_message_mb=4096",
            "rewards.client.max_message_mb=4096 is out of range: valid values are in [1, 2047]",
        ),
        (
            "rewards.pixel.server.max_message_mb=2048",
            "rewards.pixel.server.max_message_mb=2048 is out of range",
        ),
        ("data.manifest=/nonexistent", "data.manifest=/nonexistent does not exist"),
        (
            "rewards.client.batch_edits=1000",
            "client.batch_edits=1000 is above rewards.synthetic.server.max_batch_edits=512",
        ),
        ("run.name=[unclosed", "override 'run.name=[unclosed': the value is not valid YAML"),
        ("run.run_dir=", "run_dir is empty: the run would write into the current directory"),
    ],
)
def test_train_refuses_at_load_in_one_line(override: str, says: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, "train", override],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # the old code's empty run_dir would write here
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    first, *rest = proc.stderr.strip().splitlines()
    assert first.startswith("config error:") and says in first, proc.stderr[-2000:]
    assert rest == ["imported: []"], proc.stderr[-2000:]  # no traceback, nothing heavy started
    assert list(tmp_path.iterdir()) == []


SECRET_URI = "https://alice:s3cret-pw@mlflow.example:5000/?token=t0k3n&experiment=1"


def test_secrets_are_redacted_in_text_and_trees() -> None:
    assert redact_text(SECRET_URI) == "https://alice:***@mlflow.example:5000/?token=***&experiment=1"
    assert redact_text("http://ghp_abc@host/x") == "http://***@host/x"
    assert redact_text("http://host:80/path?x=1") == "http://host:80/path?x=1"
    tree = {"api_key": "sk-123", "token_file": "/etc/tok", "nested": [{"password": "p"}, "plain"]}
    assert redact_tree(tree) == {
        "api_key": "***",
        "token_file": "/etc/tok",
        "nested": [{"password": "***"}, "plain"],
    }


def test_the_tracking_uri_password_stays_out_of_the_run_and_its_trackers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    overrides = [f"run.mlflow_tracking_uri={SECRET_URI}", "run.trackers=[tensorboard,wandb]"]
    cfg = load_config(None, [*overrides, f"run.run_dir={tmp_path / 'run'}"])
    assert cfg.run.mlflow_tracking_uri == SECRET_URI  # the run itself still uses it
    assert "s3cret-pw" not in dump_config(cfg) and "t0k3n" not in dump_config(cfg)
    params = flat_params(redacted_dict(cfg))  # what the MLflow tracker logs as run parameters
    assert (
        params["run.mlflow_tracking_uri"] == "https://alice:***@mlflow.example:5000/?token=***&experiment=1"
    )
    runlog = RunLog(cfg)  # writes config.yaml and gives W&B the config
    runlog.scalars(0, {"reward/mean": 0.5})
    runlog.close()
    leaked = [p for p in (tmp_path / "run").rglob("*") if p.is_file() and b"s3cret-pw" in p.read_bytes()]
    assert leaked == []
    # the redacted config.yaml still lets the run resume (the URI may change between runs anyway)
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000001"
    ckpt.mkdir(parents=True)
    check_config(cfg, ckpt)
    # a config error does not echo the secret either
    with pytest.raises(ConfigError) as err:
        load_config(None, [*overrides, "learner.lr=-1"])
    assert "s3cret-pw" not in str(err.value) and "learner.lr=-1" in str(err.value)
    assert json.dumps(redacted_dict(cfg)).count("***") == 2
