"""bench/gpu_check.py --tiny: every section runs on the CPU, writes finite figures, and its checks can fail."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"
SECTIONS = ["device", "lore", "equality", "embed", "rb2"]


def numbers(obj, path=""):
    """(path, value) of every number in a JSON tree (bools are not numbers here)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


@pytest.mark.slow
def test_tiny_run_writes_every_section(tmp_path):
    # --peak_tflops / --bandwidth_tbs: the CPU has no datasheet entry, so the fractions get a number too
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", f"--out_dir={tmp_path}", "--peak_tflops=1.0",
                           "--bandwidth_tbs=0.01"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check_tiny.json").read_text())
    assert (tmp_path / "gpu_check_tiny.md").read_text().startswith("| section | figure | value |")
    assert results["passed"] and results["failed"] == []
    assert list(results["sections"]) == SECTIONS
    for name, section in results["sections"].items():
        assert "error" not in section and "skipped" not in section, (name, section)
        assert results["seconds"][name] >= 0
    bad = [(p, v) for p, v in numbers(results) if not math.isfinite(v)]
    assert not bad, bad

    embed = results["sections"]["embed"]
    assert embed["conversations"] == 2 * embed["prompts"]
    assert embed["engine_tokens_computed"] < embed["real_tokens"]      # the shared prompts ran once
    for implementation in ("eager", "sdpa"):
        row = embed["by_attention"][implementation]
        for key in ("engine_tokens_per_s", "loop_tokens_per_s", "speedup", "engine_tflops",
                    "engine_peak_fraction", "loop_peak_fraction"):
            assert row[key] is not None and row[key] > 0, (implementation, key)
        assert row["finite"]

    equality = results["sections"]["equality"]
    assert equality["passed"]
    for implementation in ("sdpa", "eager"):
        row = equality["by_attention"][implementation]
        assert row["passed"] and row["fp32_passed"]
        assert row["max_relative_difference"] <= equality["tolerance"]
        assert row["fp32_max_relative_difference"] <= equality["tolerance_fp32"]
    assert "skipped" in equality["by_attention"]["flash_attention_2"]   # no flash attention on a CPU

    lore = results["sections"]["lore"]
    assert lore["ms_per_iteration"] > 0 and lore["ratio_to_floor"] > 0 and lore["cpu_check_passed"]
    assert math.isclose(lore["projected_full_fit_s"], lore["ms_per_iteration"] * lore["full_iterations"] / 1e3)

    rb2 = results["sections"]["rb2"]
    assert rb2["rows"] == sum(rb2["subset_rows"].values()) and rb2["subset_rows"]["Ties"] % 2 == 0
    assert 0 < rb2["loop_rows"] < rb2["rows"] and rb2["engine_rows_per_s"] > 0 and rb2["score_difference_passed"]


@pytest.mark.slow
def test_equality_check_catches_an_off_by_one_position(monkeypatch):
    """A planted engine bug: the tokens run on a cached prefix get positions one too far. With random
    weights it moves the embeddings by less than bf16 rounding can be told from (it passes the bf16
    tolerance), which is why the float32 comparison exists: that one must fail."""
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--tiny"])
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    context = gpu_check.build_context("cpu")
    backbone = context["model"].model
    forward = backbone.forward

    def shifted(*args, position_ids=None, past_key_values=None, **kwargs):
        if past_key_values is not None and position_ids is not None:
            position_ids = position_ids + 1
        return forward(*args, position_ids=position_ids, past_key_values=past_key_values, **kwargs)

    monkeypatch.setattr(backbone, "forward", shifted)
    table = []
    out = gpu_check.section_equality(context, table)
    assert not out["passed"]
    for implementation in ("sdpa", "eager"):
        row = out["by_attention"][implementation]
        assert not row["fp32_passed"]
        assert row["fp32_max_relative_difference"] > 5 * gpu_check.TOLERANCE_FP32  # far above, not at the edge
    assert any(text.startswith("FAIL") for _, _, text in table)
