"""`cocoedit eval`: generation (local, Ray, resumable), scores, benchmark readers, aggregation, reports.

Real tiny components: a tiny FLUX-Kontext built in code, the synthetic benchmark written by
`cocoedit data synth`, headless Chromium for the report. The vLLM judge runs only in the slow test.
"""

from __future__ import annotations

import base64
import json
import math
import multiprocessing
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from cocoedit.actors.generate import EditGenerator
from cocoedit.cluster.cli import main as cli_main
from cocoedit.cluster.config import load_config
from cocoedit.cluster.eval.config import generation_settings
from cocoedit.cluster.eval.evaluate import load_bench
from cocoedit.cluster.eval.generate import generate_edits, read_png
from cocoedit.cluster.eval.pairs import image_pairs
from cocoedit.cluster.eval.report import aggregate, compare_runs
from cocoedit.rewards.eval_prompts import (
    AnswerParseError,
    gedit_item_scores,
    gedit_questions,
    imgedit_item_scores,
    imgedit_questions,
    parse_json_answer,
)
from tests.browser import open_in_chromium

NUM_ITEMS = 8
SIZE = 32


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cocoedit.actors.policies.tiny import build_tiny_model

    return build_tiny_model("flux_kontext", tmp_path_factory.mktemp("eval_model") / "flux", seed=0)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval_data") / "synth"
    assert cli_main(["data", "synth", "--out", str(out), "--num", str(NUM_ITEMS), "--size", str(SIZE)]) == 0
    return out


@pytest.fixture(scope="module")
def overrides(tiny_model: Path) -> list[str]:
    return [
        f"policy.model_path={tiny_model}",
        f"eval.image_size={SIZE}",
        "eval.num_steps=2",
        "eval.batch_size=4",
        # when a Ray cluster is up (another test module's), eval shards over it: CPU-only workers
        "eval.gpus_per_worker=0",
        "eval.cpus_per_worker=0.5",
    ]


@pytest.fixture(scope="module")
def policy_run(tmp_path_factory: pytest.TempPathFactory, synth_data: Path, overrides: list[str]) -> Path:
    out = tmp_path_factory.mktemp("eval_runs") / "policy"
    argv = ["eval", "--bench", "manifest", "--data", str(synth_data), "--out", str(out), *overrides]
    assert cli_main(argv) == 0
    return out


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.img_src: list[str] = []
        self.headings: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "img":
            self.img_src.append(dict(attrs)["src"])
        self._in_h2 = tag == "h2"

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def test_eval_writes_results_json_and_report(policy_run: Path) -> None:
    res = _results(policy_run)
    assert res["bench"] == "manifest" and res["edits"] == "policy"
    assert len(res["items"]) == NUM_ITEMS
    assert sorted(res["groups"]) == ["add", "background", "recolour", "remove"]
    assert all(g["n"] == 2 for g in res["groups"].values())
    s = res["settings"]
    assert (s["family"], s["sampler"], s["num_steps"], s["guidance"]) == ("flux_kontext", "euler", 2, 2.5)
    assert res["model"]["family"] == "flux_kontext" and res["lora"] is None and res["judge"] is None
    assert res["versions"]["torch"] and res["versions"]["diffusers"]
    assert res["metrics"]["psnr_cap_db"] == 80.0
    for item in res["items"]:
        edit = read_png(policy_run / item["edit"])
        assert edit.shape == (3, SIZE, SIZE)
        for k in ("psnr_keep", "ssim_keep", "psnr_pie", "ssim_pie", "synthetic"):
            assert item[k] is not None and math.isfinite(item[k]), (item["id"], k)
        assert 0.0 <= item["synthetic"] <= 1.0
    # overall = mean of group means, which here (equal groups) equals the item mean
    for k in res["metric_keys"]:
        group_mean = np.mean([g[k] for g in res["groups"].values()])
        assert res["overall"][k] == pytest.approx(group_mean)
        assert res["overall_item_mean"][k] == pytest.approx(np.mean([i[k] for i in res["items"]]))

    dom = _Dom()
    dom.feed((policy_run / "report.html").read_text())
    assert dom.tags["table"] >= 5  # info, overall, groups, best gallery, worst gallery
    assert dom.tags["svg"] >= 3 and dom.tags["rect"] >= 4 and dom.tags["circle"] == NUM_ITEMS
    assert len(dom.img_src) == 2 * 6 * 4  # best + worst, source | edit | overlay | target
    assert all(src.startswith("data:image/png;base64,") for src in dom.img_src)
    assert any(h.startswith("Best") for h in dom.headings) and any(
        h.startswith("Worst") for h in dom.headings
    )


def test_report_opens_in_headless_chromium(policy_run: Path) -> None:
    dom = open_in_chromium(policy_run / "report.html")
    # the report's load handler counts images that did not decode
    assert 'data-images="48"' in dom and 'data-broken-images="0"' in dom
    assert dom.count("<svg") >= 3 and dom.count("<table") >= 5


def test_oracle_edits_give_analytic_scores_and_compare(
    tmp_path: Path, synth_data: Path, overrides: list[str]
) -> None:
    runs = {}
    for edits in ("target", "source"):
        runs[edits] = tmp_path / edits
        argv = ["eval", "--bench", "manifest", "--data", str(synth_data), "--out", str(runs[edits])]
        assert cli_main([*argv, "--edits", edits, *overrides]) == 0
    target, source = _results(runs["target"]), _results(runs["source"])
    assert target["model"] is None and target["settings"] == {"edits": "target", "image_size": SIZE}
    for item in target["items"]:
        # the target equals the source outside the mask: MSE 0, PSNR at the 80 dB cap
        assert item["psnr_keep"] == 80.0 and item["psnr_pie"] == 80.0
        assert item["ssim_pie"] == pytest.approx(1.0, abs=1e-6)
        assert -1.0 <= item["ssim_keep"] < 1.0  # SSIM windows straddling the mask see the edited region
        assert item["synthetic"] == 1.0  # the best instruction score
    for item in source["items"]:
        assert item["psnr_keep"] == 80.0 and item["psnr_pie"] == 80.0
        assert item["ssim_keep"] == pytest.approx(1.0, abs=1e-6) and item["ssim_pie"] == pytest.approx(
            1.0, abs=1e-6
        )
        assert item["synthetic"] == 0.0  # the worst instruction score
    assert target["overall"]["synthetic"] == 1.0 and source["overall"]["synthetic"] == 0.0

    html_out = tmp_path / "cmp.html"
    assert (
        cli_main(["eval", "compare", str(runs["source"]), str(runs["target"]), "--out", str(html_out)]) == 0
    )
    text, _ = compare_runs(runs["source"], runs["target"], html_out, pairs_shown=4)
    overall = next(ln for ln in text.splitlines() if ln.startswith("overall"))
    assert "+1.000" in overall  # synthetic: target - source
    page = html_out.read_text()
    # group table (header, 4 groups, overall), then the side-by-side pairs (header, 4 items)
    assert page.count("<tr>") == (1 + 4 + 1) + (1 + 4) and "B - A" in page and "<svg" in page
    # each pair: the item's edit in A (its source) beside its edit in B (its target), +1 apart
    pairs = image_pairs(runs["source"], runs["target"], source, target, "synthetic", 4)
    assert [(p["a"], p["b"], p["delta"]) for p in pairs] == [(0.0, 1.0, 1.0)] * 4
    for p in pairs:
        for run, uri in ((runs["source"], p["edit_a"]), (runs["target"], p["edit_b"])):
            assert base64.b64decode(uri.split(",", 1)[1]) == (run / "edits" / f"{p['id']}.png").read_bytes()
            assert uri in page
    # the other way round every item lost: the 2 largest losses, then gains fill up to n (none here)
    back = image_pairs(runs["target"], runs["source"], target, source, "synthetic", 4)
    assert [p["delta"] for p in back] == [-1.0, -1.0]


def _generate_in_child(items: list, out: Path, policy_cfg: Any, eval_cfg: Any) -> None:
    # one thread: OpenMP's pool does not survive fork (a forked child's first parallel op hangs)
    torch.set_num_threads(1)
    generate_edits(items, out, policy_cfg, eval_cfg)


def test_killed_eval_resumes_with_only_the_missing_items(
    tmp_path: Path, synth_data: Path, overrides: list[str]
) -> None:
    cfg = load_config(None, [*overrides, "eval.batch_size=1"])
    items = load_bench("manifest", synth_data, cfg.eval, tmp_path)
    out = tmp_path / "run"
    edits = out / "edits"
    # a forked child shares this process's imports, so it starts generating at once (a fresh
    # `cocoedit eval` process spends most of its time importing diffusers)
    child = multiprocessing.get_context("fork").Process(
        target=_generate_in_child, args=(items, out, cfg.policy, cfg.eval)
    )
    child.start()
    try:
        deadline = time.monotonic() + 300
        while not (edits.is_dir() and len(list(edits.glob("*.png"))) >= 2):
            if not child.is_alive() or time.monotonic() > deadline:
                raise AssertionError(f"the generating child ended or stalled (exit code {child.exitcode})")
            time.sleep(0.005)
    finally:
        child.kill()  # SIGKILL: no clean-up of any kind
        child.join()
    done = {p: p.stat().st_mtime_ns for p in edits.glob("*.png")}
    assert 2 <= len(done) < len(items), "kill the eval half-way"
    for p in done:  # atomic writes: whatever is there is a whole PNG
        assert read_png(p).shape == (3, SIZE, SIZE)

    counts = generate_edits(items, out, cfg.policy, cfg.eval)
    assert counts == {"generated": len(items) - len(done), "skipped": len(done)}
    assert {p: p.stat().st_mtime_ns for p in done} == done  # finished edits were not redone
    assert len(list(edits.glob("*.png"))) == len(items)

    # an edit is a function of (settings, item): regenerating a deleted one gives the same bytes
    victim = sorted(done)[0]
    before = victim.read_bytes()
    victim.unlink()
    assert generate_edits(items, out, cfg.policy, cfg.eval) == {"generated": 1, "skipped": len(items) - 1}
    assert victim.read_bytes() == before

    other = load_config(None, [*overrides, "eval.batch_size=1", "eval.num_steps=3"])
    with pytest.raises(ValueError, match="other settings"):
        generate_edits(items, out, other.policy, other.eval)


def test_aggregation_reproduces_hand_computed_gedit_table() -> None:
    a1 = gedit_item_scores([8, 9], [6, 7])  # SC 8, PQ 6, O sqrt(48)
    a2 = gedit_item_scores([5, 4], [9, 9.5])  # SC 4, PQ 9, O 6
    b1 = gedit_item_scores([10, 10], [10, 10])
    assert (a1["sc"], a1["pq"], a1["o"]) == (8, 6, pytest.approx(math.sqrt(48)))
    rows = [
        {"id": "a1", "group": "color_alter", **a1},
        {"id": "a2", "group": "color_alter", **a2},
        {"id": "b1", "group": "subject-add", **b1},
        {"id": "b2", "group": "subject-add", "judge_error": "sc: parse failure"},
    ]
    agg = aggregate(rows, "gedit")
    a, b = agg["groups"]["color_alter"], agg["groups"]["subject-add"]
    assert (a["sc"], a["pq"], a["o"]) == (6.0, 7.5, pytest.approx((math.sqrt(48) + 6) / 2))
    assert (b["sc"], b["pq"], b["o"], b["n"]) == (10.0, 10.0, 10.0, 2)
    assert b["judge_failures"] == 1 and b["missing"]["o"] == 1 and a["missing"]["o"] == 0
    assert agg["overall"]["sc"] == 8.0 and agg["overall"]["pq"] == 8.75
    assert agg["overall"]["o"] == pytest.approx(((math.sqrt(48) + 6) / 2 + 10) / 2)
    assert agg["overall_item_mean"]["sc"] == pytest.approx(22 / 3)
    assert agg["failures"] == {"judge": 1, "judge_items": ["b2"]}
    assert agg["primary"] == "o" and agg["overall"]["psnr_keep"] is None


def test_aggregation_reproduces_hand_computed_imgedit_table() -> None:
    rows = [
        {"id": "1", "group": "add", **imgedit_item_scores([5, 4, 3])},
        {"id": "2", "group": "add", **imgedit_item_scores([3, 3, 3])},
        {"id": "3", "group": "remove", **imgedit_item_scores([2, 2, 5])},
    ]
    agg = aggregate(rows, "imgedit")
    assert agg["groups"]["add"]["score"] == 3.5 and agg["groups"]["remove"]["score"] == 3.0
    assert agg["groups"]["add"]["compliance"] == 4.0 and agg["groups"]["add"]["preservation"] == 3.0
    assert agg["overall"]["score"] == 3.25  # mean of type means, not the item mean
    assert agg["overall_item_mean"]["score"] == pytest.approx(10 / 3)
    assert agg["primary"] == "score" and agg["failures"]["judge"] == 0


def test_judge_answers_are_parsed_robustly_and_failures_are_errors() -> None:
    sc, pq = gedit_questions("make the sky red")
    assert sc.images == ("source", "edited") and pq.images == ("edited",)
    assert "make the sky red" in sc.text
    assert parse_json_answer('```json\n{"score": [7, 8], "reasoning": "ok"}\n```', sc) == [7, 8]
    assert parse_json_answer("Sure! {'score': ['6', '9/10'],}", sc) == [6, 9]
    assert parse_json_answer('Here {"reasoning": "a {b} c", "score": [3, 4.5]} done', pq) == [3, 4.5]
    for bad in (
        "",
        "7",
        '{"score": [11, 3]}',
        '{"score": [7]}',
        '{"result": {"score": [1, 2]}}',
        "{score: 7",
    ):
        with pytest.raises(AnswerParseError):
            parse_json_answer(bad, sc)
    (q,) = imgedit_questions("remove the cup", "remove")
    assert "removed region" in q.text and q.keys == ("compliance", "quality", "preservation")
    assert parse_json_answer('{"Compliance": 5, "quality": "4", "preservation": 3.0}', q) == [5, 4, 3]
    with pytest.raises(AnswerParseError, match="outside"):
        parse_json_answer('{"compliance": 0, "quality": 4, "preservation": 3}', q)
    with pytest.raises(AnswerParseError, match="lacks"):
        parse_json_answer('{"compliance": 4, "quality": 4}', q)
    with pytest.raises(AnswerParseError):
        parse_json_answer('{"compliance": true, "quality": 4, "preservation": 3}', q)


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_gedit_and_imgedit_layouts_load_with_masks(
    tmp_path: Path, synth_data: Path, overrides: list[str]
) -> None:
    records = [json.loads(ln) for ln in (synth_data / "manifest.jsonl").read_text().splitlines()]
    gedit = tmp_path / "gedit"
    (gedit / "images").mkdir(parents=True)
    (gedit / "masks").mkdir()
    rows = []
    for n, r in enumerate(records[:4]):
        key = f"g{n:03d}"
        shutil.copy(synth_data / r["source"], gedit / "images" / f"{key}.png")
        shutil.copy(synth_data / r["mask"], gedit / "masks" / f"{key}_mask.png")
        task = "color_alter" if n % 2 else "subject-remove"
        rows.append(
            {
                "key": key,
                "task_type": task,
                "instruction": r["instruction"],
                "instruction_language": "en",
                "input_image": f"images/{key}.png",
            }
        )
    rows.append({**rows[0], "key": "cn1", "instruction_language": "cn"})  # filtered out by language
    (gedit / "gedit.json").write_text(json.dumps(rows))
    cfg = load_config(None, overrides).eval
    items = load_bench("gedit", gedit, cfg, tmp_path / "work_g")
    assert [i.item_id for i in items] == ["g000", "g001", "g002", "g003"]
    assert [i.task for i in items] == ["subject-remove", "color_alter"] * 2
    source = torch.from_numpy(np.array(Image.open(gedit / "images" / "g001.png").convert("RGB"))).permute(
        2, 0, 1
    )
    assert torch.equal(items[1].source_image, source)
    mask = np.asarray(Image.open(gedit / "masks" / "g001_mask.png")) >= 128
    assert torch.equal(items[1].edit_mask[0].bool(), torch.from_numpy(mask))

    # a whole GEdit run with source edits (no judge): the groups are GEdit's task types
    out = tmp_path / "gedit_run"
    argv = ["eval", "--bench", "gedit", "--data", str(gedit), "--out", str(out), "--edits", "source"]
    assert cli_main([*argv, *overrides, "eval.judge=none"]) == 0
    assert sorted(_results(out)["groups"]) == ["color_alter", "subject-remove"]

    imgedit = tmp_path / "imgedit"
    basic = {}
    for n, r in enumerate(records[:3]):
        rgb = np.asarray(Image.open(synth_data / r["source"]).convert("RGB"))
        _write_png(imgedit / "singleturn" / "animal" / f"{n}.png", rgb)
        keep_white = 255 - np.asarray(Image.open(synth_data / r["mask"]))  # stored inverted on purpose
        _write_png(imgedit / "masks" / f"{n}_mask.png", keep_white)
        basic[str(n)] = {
            "id": f"animal/{n}.png",
            "prompt": r["instruction"],
            "edit_type": ["add", "remove", "add"][n],
        }
    (imgedit / "basic_edit.json").write_text(json.dumps(basic))
    with pytest.warns(UserWarning, match="inverted"):
        load_bench("imgedit", imgedit, cfg, tmp_path / "work_i1")
    fixed = load_config(None, [*overrides, "eval.mask_polarity=keep_white"]).eval
    items = load_bench("imgedit", imgedit, fixed, tmp_path / "work_i2")
    assert [i.task for i in items] == ["add", "remove", "add"]
    expect = np.asarray(Image.open(synth_data / records[1]["mask"])) >= 128
    assert torch.equal(items[1].edit_mask[0].bool(), torch.from_numpy(expect))

    (imgedit / "masks" / "2_mask.png").unlink()
    with pytest.raises(ValueError, match="no mask"):
        load_bench("imgedit", imgedit, fixed, tmp_path / "work_i3")


def test_stock_settings_per_family_and_lora_changes_edits(
    tmp_path: Path, synth_data: Path, overrides: list[str]
) -> None:
    from safetensors.torch import save_file

    cfg = load_config(None, overrides)
    kontext = generation_settings(cfg.policy, load_config(None, []).eval)
    assert (kontext["num_steps"], kontext["guidance"], kontext["true_cfg_scale"]) == (28, 2.5, 1.0)
    qwen_policy = load_config(None, ["policy.family=qwen_image_edit"]).policy
    qwen = generation_settings(qwen_policy, load_config(None, []).eval)
    assert (qwen["num_steps"], qwen["true_cfg_scale"], qwen["negative_prompt"]) == (40, 4.0, " ")

    items = load_bench("manifest", synth_data, cfg.eval, tmp_path)[:2]
    base = EditGenerator(cfg.policy, generation_settings(cfg.policy, cfg.eval))
    state = base.policy.lora_state_dict("default")
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(v.shape, generator=gen) * 0.5 if "lora_B" in k else v) for k, v in state.items()}
    lora = tmp_path / "lora_old.safetensors"
    save_file({f"transformer.{k}": v.contiguous() for k, v in state.items()}, str(lora))
    tuned = EditGenerator(cfg.policy, generation_settings(cfg.policy, cfg.eval), str(lora))
    assert tuned.adapter == "old" and base.adapter == "ref"
    base_edits, tuned_edits = base.generate(items), tuned.generate(items)
    assert [i for i, _ in base_edits] == [i.item_id for i in items]
    assert all(a != b for (_, a), (_, b) in zip(base_edits, tuned_edits, strict=True))
    assert base.generate(items) == base_edits  # deterministic per item


@pytest.mark.slow
def test_ray_sharded_generation_matches_local(
    ray_local, tmp_path: Path, synth_data: Path, overrides: list[str]
) -> None:
    cfg = load_config(
        None, [*overrides, "eval.num_workers=2", "eval.cpus_per_worker=0.5", "eval.gpus_per_worker=0"]
    )
    items = load_bench("manifest", synth_data, cfg.eval, tmp_path)
    counts = generate_edits(items, tmp_path / "ray", cfg.policy, cfg.eval, use_ray=True)
    assert counts == {"generated": NUM_ITEMS, "skipped": 0}
    generate_edits(items, tmp_path / "local", cfg.policy, cfg.eval, use_ray=False)
    for item in items:
        ray_png = (tmp_path / "ray" / "edits" / f"{item.item_id}.png").read_bytes()
        assert ray_png == (tmp_path / "local" / "edits" / f"{item.item_id}.png").read_bytes()


@pytest.mark.slow
def test_gedit_judge_on_tiny_vllm_counts_failures(
    tmp_path: Path, synth_data: Path, overrides: list[str]
) -> None:
    """The tiny judge has random weights: its answers are digits, not the JSON asked for, so every edit
    must come back as a counted judge failure with no SC/PQ/O invented."""
    out = tmp_path / "judged"
    argv = ["eval", "--bench", "manifest", "--data", str(synth_data), "--out", str(out), "--edits", "source"]
    extra = [
        "eval.judge=gedit",
        "eval.max_items=2",
        "eval.judge_max_tokens=8",
        f"rewards.mllm.tiny_judge_dir={tmp_path / 'judge'}",
        "rewards.mllm.gpu_memory_utilization=0.1",
        "rewards.mllm.max_model_len=1024",
        "rewards.mllm.dtype=float32",
        "rewards.mllm.image_size=56",
    ]
    assert cli_main([*argv, *overrides, *extra]) == 0
    res = _results(out)
    assert res["judge"]["protocol"] == "gedit" and res["judge"]["prompt_version"]
    assert res["failures"] == {"judge": 2, "judge_items": [i["id"] for i in res["items"]]}
    for item in res["items"]:
        assert "parse failure" in item["judge_error"] and item.get("sc") is None and item.get("o") is None
    assert res["overall"]["o"] is None and res["overall"]["psnr_keep"] == 80.0
    cached = [json.loads(ln) for ln in (out / "judge.jsonl").read_text().splitlines()]
    assert len(cached) == 2 and all(set(c["answers"]) == {"sc", "pq"} for c in cached)


def test_qwen_true_cfg_keeps_the_conditional_norm_and_changes_edits(tmp_path: Path, synth_data: Path) -> None:
    from cocoedit.actors.policies.tiny import build_tiny_model

    model = build_tiny_model("qwen_image_edit", tmp_path / "qwen", seed=0)
    base = ["policy.family=qwen_image_edit", f"policy.model_path={model}", f"eval.image_size={SIZE}"]
    cfg = load_config(None, [*base, "eval.num_steps=2"])
    items = load_bench("manifest", synth_data, cfg.eval, tmp_path)[:2]
    gen = EditGenerator(cfg.policy, generation_settings(cfg.policy, cfg.eval))
    assert gen.settings["true_cfg_scale"] == 4.0 and gen.settings["negative_prompt"] == " "
    policy = gen.policy
    sources = torch.stack([i.source_image for i in items])
    cond = policy.encode_condition([i.instruction for i in items], sources)
    neg = policy.encode_condition([" "] * 2, sources)
    length, dim = policy.latent_shape(SIZE, SIZE)
    x = torch.randn((2, length, dim), generator=torch.Generator().manual_seed(0))
    t = torch.full((2,), 0.7)
    with torch.no_grad(), policy.adapter("ref"):
        v = policy.velocity(x, t, cond)
        v_cfg = gen._velocity(cond, neg)(x, t)
    # QwenImageEditPipeline rescales the guided prediction to the conditional one's norm per token
    torch.testing.assert_close(v_cfg.norm(dim=-1), v.norm(dim=-1), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(v_cfg, v)
    plain = load_config(None, [*base, "eval.num_steps=2", "eval.true_cfg_scale=1.0"])
    no_cfg = EditGenerator(plain.policy, generation_settings(plain.policy, plain.eval))
    assert [b for _, b in gen.generate(items)] != [b for _, b in no_cfg.generate(items)]
