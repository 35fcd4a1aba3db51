"""The model card beside a trained LoRA: written with huggingface_hub's card tooling, loaded back by its
parser, its stock-pipeline call reproduces `cocoedit edit` pixel for pixel on a tiny editor, and
`cocoedit export --push-to-hub` uploads the LoRA and the card to a Hub endpoint (a local fake one on
127.0.0.1, through HF_ENDPOINT)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cocoedit.cluster.cli import main as cli_main
from cocoedit.cluster.config import dump_config, load_config
from cocoedit.cluster.export.card import interval, per_item, write_card
from cocoedit.learner.learner import Learner
from tests.learner import common

SIZE = common.SIZE


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny FLUX-Kontext model dir, a checkpoint of one learner update in a run dir with config.yaml)."""
    root = tmp_path_factory.mktemp("card")
    model = common.build_model(root / "model")
    policy = common.load(model)
    learner = Learner(policy.cfg, common.learner_config(zero_stage=0), policy=policy)  # type: ignore[attr-defined]
    batch = common.make_batch(policy)
    learner.update(batch, torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.ones(4, dtype=torch.bool))
    run_dir = root / "run"
    ckpt = learner.save(run_dir, {"epoch": 0})
    cfg = load_config(
        None,
        [f"policy.model_path={model}", f"run.run_dir={run_dir}", "policy.lora_rank=4", "policy.lora_alpha=8"],
    )
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    return model, ckpt


def test_checkpoints_of_the_loop_are_named_by_epochs_done(checkpoint: tuple[Path, Path]) -> None:
    _, ckpt = checkpoint
    assert ckpt.name == "epoch_00000001"  # extra_state epoch 0 done: one epoch, what checkpoint_every counts


def test_card_loads_and_its_pipeline_call_reproduces_cocoedit_edit(
    checkpoint: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import ModelCard

    model, ckpt = checkpoint
    out = tmp_path / "export"
    assert cli_main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    card = ModelCard.load(str(out / "README.md"))
    assert card.data.library_name == "diffusers" and card.data.license == "other"
    assert card.data.base_model == "black-forest-labs/FLUX.1-Kontext-dev"
    assert "lora" in card.data.tags and card.data.pipeline_tag == "image-to-image"
    assert f"| training resolution | {SIZE}x{SIZE} px |" in card.text
    assert "1 epochs, 1 optimizer steps" in card.text and "lam_pos 0.02" in card.text

    source = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(source).save(tmp_path / "in.png")
    instruction = "paint the square red"
    assert (
        cli_main(
            ["edit", "--model", str(model), "--lora", str(out), "--image", str(tmp_path / "in.png")]
            + ["--instruction", instruction, "--out", str(tmp_path / "cocoedit.png")]
        )
        == 0
    )
    (snippet,) = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    assert f"max_area={SIZE * SIZE}" in snippet and f"height={SIZE}" in snippet
    for name, value in (("base_model", model), ("lora", out), ("source", tmp_path / "in.png")):
        snippet, n = re.subn(rf"^{name} = .*$", f"{name} = {str(value)!r}", snippet, flags=re.M)
        assert n == 1
    snippet = re.sub(r"^instruction = .*$", f"instruction = {instruction!r}", snippet, flags=re.M)
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "model card", "exec"), {})  # noqa: S102 - the card's own code, as a user runs it
    stock = np.asarray(Image.open(tmp_path / "out.png"))
    ours = np.asarray(Image.open(tmp_path / "cocoedit.png"))
    assert stock.shape == ours.shape == (SIZE, SIZE, 3)
    assert np.array_equal(stock, ours)


def test_final_evaluation_is_per_item_with_student_t_intervals(tmp_path: Path) -> None:
    # 3 items x 2 seeds; per item the seeds are averaged: 1, 2, 3 -> mean 2, half-width t(0.975, 2) / sqrt(3)
    groups = ["eval:a", "eval:a", "eval:b", "eval:b", "eval:c", "eval:c"]
    values = per_item(groups, {"reward": np.array([0.5, 1.5, 2.0, 2.0, 2.5, 3.5])})
    assert values == {"reward": [1.0, 2.0, 3.0]}
    mean, half, n = interval(values["reward"])
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.302653 / 3**0.5, rel=1e-6)
    cfg = load_config(None, ["run.eval_items=3", "run.eval_seeds=2"])
    text = write_card(cfg, tmp_path, 60, 58, values).read_text()
    assert "| reward | 2.0000 | +- 2.4841 | 3 |" in text
    assert "60 epochs, 58 optimizer steps" in text


class _FakeHub(BaseHTTPRequestHandler):
    """The four calls of HfApi.create_repo + upload_folder (small files go inline, base64)."""

    files: dict[str, bytes] = {}

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, obj: object, code: int = 200) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._json({"error": "not here"}, 404)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = f"http://127.0.0.1:{self.server.server_address[1]}/me/tiny-lora"
        if self.path == "/api/repos/create":
            return self._json({"url": url, "name": "me/tiny-lora"})
        if self.path == "/api/validate-yaml":
            return self._json({})
        if self.path.startswith("/api/models/me/tiny-lora/preupload/"):
            files = json.loads(data)["files"]
            return self._json(
                {
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                    ]
                }
            )
        if self.path.startswith("/api/models/me/tiny-lora/commit/"):
            for line in data.splitlines():
                op = json.loads(line)
                if op["key"] == "file":
                    self.files[op["value"]["path"]] = base64.b64decode(op["value"]["content"])
            return self._json({"commitUrl": f"{url}/commit/{'a' * 40}", "commitOid": "a" * 40})
        return self._json({"error": f"unexpected {self.path}"}, 404)


def test_export_push_to_hub_uploads_the_lora_and_its_card(
    checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    _, ckpt = checkpoint
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **os.environ,
        "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
        "HF_TOKEN": "hf_test_token_for_a_local_fake_hub",
        "HF_HUB_OFFLINE": "0",
    }
    out = tmp_path / "export"
    args = ["export", "--checkpoint", str(ckpt), "--out", str(out), "--push-to-hub", "me/tiny-lora"]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "cocoedit.cluster.cli", *args], env=env, capture_output=True, text=True
        )
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    assert "pushed to me/tiny-lora" in done.stdout
    assert _FakeHub.files == {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(_FakeHub.files) == {"README.md", "pytorch_lora_weights.safetensors"}
