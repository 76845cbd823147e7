"""The GPU acceptance benchmark (bench/gpu_acceptance.sh → gpu_acceptance.py → gpu_step.py, gpu_flops.py) where
there is no GPU: its reduced CPU mode end to end, and the FLOP inventory of both LTX-2 versions at full size on
the meta device.

The reduced mode builds the real layout of both versions (3 blocks, widths / 8) with an fp32 and an int8 base,
trains a few steps and checks what the GPU run checks: losses finite, the planner's prediction of the step's
peak within 10 % of the live tensor storage measured, the attention kernel seen by the profiler, and (CPU only)
the analytic FLOPs against torch's FlopCounterMode. The numbers are compared with sources other than the code
under test: the planner's own parameter counts (ltx2trainer.planning.dims), the diffusers modules themselves.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

from bench import gpu_flops, gpu_step
from ltx2trainer.model.lora import attach_lora
from ltx2trainer.planning.dims import LTX_2_19B, LTX_23

ROOT = Path(__file__).resolve().parent.parent
RUNS = {("2.0", "fp32"), ("2.0", "int8"), ("2.3", "fp32"), ("2.3", "int8")}
PLANNER = {"2.0": LTX_2_19B, "2.3": LTX_23}


@pytest.fixture(scope="module")
def acceptance(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("acceptance")
    # From another directory: the script finds the repository itself.
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_acceptance.sh"), "--cpu", "--out", str(out)],
                          capture_output=True, text=True, cwd=out, timeout=540)
    summary_path = out / "acceptance.json"
    assert summary_path.exists(), done.stdout[-4000:] + done.stderr[-4000:]
    return done, json.loads(summary_path.read_text())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_reduced_cpu_acceptance_runs_and_passes(acceptance):
    done, summary = acceptance
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:] + json.dumps(summary.get("errors"))
    assert summary["reduced"] and summary["verdict"] == "PASS"
    rows = {(r["version"], r["precision"]): r for r in summary["rows"]}
    assert set(rows) == RUNS
    table = done.stdout[done.stdout.index("version  precision"):]
    for version, precision in RUNS:  # one printed row per run, with its numbers
        row = rows[version, precision]
        assert any(line.split()[:4] == [version, precision, "adamw", f"{row['s_per_step']:.3f}"]
                   for line in table.splitlines()), table
    assert all(t["verdict"] in ("PASS", "n/a") for t in summary["targets"])
    assert sum(t["verdict"] == "PASS" for t in summary["targets"]) == 4 * len(RUNS)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_reduced_cpu_runs_measure_what_they_claim(acceptance):
    _, summary = acceptance
    rows = {(r["version"], r["precision"]): r for r in summary["rows"]}
    for (version, precision), row in rows.items():
        label = f"LTX-{version} {precision}"
        assert row["ok"], label
        assert len(row["losses"]) >= 4 and all(math.isfinite(v) for v in row["losses"]), (label, row["losses"])
        assert len(set(row["losses"])) > 1, f"{label}: the loss never changed: is anything trained?"
        assert abs(row["flop_check_percent"]) < 2, (label, row["flop_check_percent"])
        assert abs(row["error_percent"]) <= 10, (label, row["predicted_gb"], row["measured_gb"])
        # 3 blocks x 6 attentions, forward and checkpoint recompute, in the profiled step.
        assert row["attention"].endswith("x36"), (label, row["attention"])
        assert row["syncs"] is None and row["mfu_percent"] is None and row["reduced"]
    for version in ("2.0", "2.3"):  # the int8 base really is smaller: blocks 1-2 were quantized
        assert rows[version, "int8"]["measured_gb"] < 0.7 * rows[version, "fp32"]["measured_gb"]


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_flop_inventory_lists_the_full_size_model(version):
    """Every nn.Linear of the 48-block model, by name and shape (on the meta device), and the parameter and
    LoRA counts the planner has from its own listing."""
    config = gpu_step.model_config(version, 48)
    model = gpu_step.build_transformer(config, "meta", torch.bfloat16)
    planner = PLANNER[version].transformer
    assert sum(p.numel() for p in model.parameters()) == planner.params
    weights = gpu_flops.check_inventory(model, config)
    assert weights == sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert gpu_flops.expected_lora_params(config, 32) == planner.lora_params(32)
    lora = attach_lora(model, 32)
    assert sum(p.numel() for p in lora) == planner.lora_params(32)
    gpu_flops.check_inventory(model, config)  # PEFT's wrapped base layers are found too
    names = {lin.name for lin in gpu_flops.linear_inventory(config, 1, 1, 1)[0]}
    assert ("transformer_blocks.47.attn1.to_gate_logits" in names) == (version == "2.3")
    assert ("prompt_adaln.linear" in names) == (version == "2.3")
    assert ("caption_projection.linear_1" in names) == (version == "2.0")


def test_flop_inventory_refuses_the_other_version():
    config_20, config_23 = gpu_step.model_config("2.0", 2), gpu_step.model_config("2.3", 2)
    with pytest.raises(AssertionError, match=r"missing \['audio_caption_projection.*unlisted \['audio_prompt_adaln"
                                             r".*shapes \['time_embed.linear'"):
        gpu_flops.check_inventory(gpu_step.build_transformer(config_23, "meta", torch.bfloat16), config_20)
    with pytest.raises(AssertionError, match=r"missing \['audio_prompt_adaln.*unlisted \['audio_caption_projection"):
        gpu_flops.check_inventory(gpu_step.build_transformer(config_20, "meta", torch.bfloat16), config_23)


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_analytic_flops_match_flop_counter_at_real_width(version, tmp_path):
    """Two real-width blocks at the real sample size (6912 video tokens: attention is a third of the FLOPs),
    counted by FlopCounterMode on the meta device."""
    out = tmp_path / "meta.json"
    gpu_step.main(["--meta", "--version", version, "--layers", "2", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["flops"]["attention_fwd"] > 0.1 * result["flops"]["forward"]
    assert abs(result["flop_check_percent"]) < 0.01, result["flop_check_percent"]  # exact but for rounding
    expected = gpu_flops.step_flops(gpu_step.model_config(version, 2), 6912, 89, 1024, 32)
    assert result["flops"] == pytest.approx(expected)
