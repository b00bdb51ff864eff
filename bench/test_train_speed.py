"""The training-speed bench: its statistics, its step timer, the reference scripts' source, and one
short end-to-end run (our real stage against a stand-in reference script) on the tiny model.

    python -m pytest -q bench/test_train_speed.py
"""

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import train_speed
from train_speed import REFERENCE_SCRIPTS, steady, summarize

BENCH = Path(__file__).resolve().parent

# Stands in for diffusers' scripts: their arguments, AdamW steps behind accelerate's wrapper, weights.
FAKE_REFERENCE = """
import argparse, os
import torch
from accelerate import Accelerator
from safetensors.torch import save_file
parser = argparse.ArgumentParser()
parser.add_argument("--max_train_steps", type=int)
parser.add_argument("--output_dir")
parser.add_argument("--mixed_precision")
args, _ = parser.parse_known_args()
assert args.mixed_precision in ("no", "bf16"), args.mixed_precision  # fp16 is never asked for on a CPU
weight = torch.nn.Parameter(torch.zeros(3))
optimizer = Accelerator(cpu=True).prepare(torch.optim.AdamW([weight]))
for _ in range(args.max_train_steps):
    weight.sum().backward()
    optimizer.step()
    optimizer.zero_grad()
os.makedirs(args.output_dir, exist_ok=True)
save_file({"weight": weight.detach()}, os.path.join(args.output_dir, "weights.safetensors"))
"""


@pytest.fixture
def fake_reference(tmp_path):
    folder = tmp_path / "reference"
    folder.mkdir()
    for name in REFERENCE_SCRIPTS.values():
        (folder / name).write_text(FAKE_REFERENCE)
    return folder


def run_record(wall, cpu, start=0.0):
    return {"wall": wall, "cpu": cpu, "start": start, "torch_threads": 1}


def test_steady_is_the_median_step_interval_after_warmup():
    wall = [1.0, 5.0, 5.1, 5.3, 5.4, 9.0, 9.1]  # slow warm-up step, then one outlier interval
    result = steady(run_record(wall, [0.5 * t for t in wall], start=0.25), warmup=1)
    assert result["step_s"] == pytest.approx(0.1)
    assert result["step_cpu_s"] == pytest.approx(0.05)
    assert result["to_first_step_s"] == pytest.approx(0.75)
    assert result["to_first_step_cpu_s"] == pytest.approx(0.5)
    assert result["steps"] == 7


def test_summary_ratios_and_targets():
    def side(step, whole):
        return [{"step_s": step, "step_cpu_s": step, "to_first_step_s": 1.0, "to_first_step_cpu_s": 1.0,
                 "to_weights_s": whole, "peak_rss_mib": 500.0,
                 "to_exit_s": whole, "cpu_s": whole}]

    bare = [{"step_s": 0.010, "step_cpu_s": 0.010, "fused_step_s": 0.008, "fused_step_cpu_s": 0.008}]
    summary = summarize({"ours": side(0.0105, 8.0), "reference": side(0.021, 12.0)}, bare, ["ours", "reference"])
    ours = summary["ours"]
    assert ours["steady_speedup"] == pytest.approx(2.0)
    assert ours["whole_run_speedup"] == pytest.approx(1.5)
    assert ours["step_over_bare"] == pytest.approx(0.05)
    assert ours["targets_met"] == {"steady_speedup": True, "step_within_10pct_of_bare": True,
                                   "whole_run_speedup": True}
    slow = summarize({"ours": side(0.02, 11.0), "reference": side(0.021, 12.0)}, bare, ["ours", "reference"])
    assert not any(slow["ours"]["targets_met"].values())


def test_steptimer_counts_each_optimizer_step_once(tmp_path, fake_reference):
    out = tmp_path / "steps.json"
    script = fake_reference / REFERENCE_SCRIPTS["lora"]
    subprocess.run([sys.executable, BENCH / "steptimer.py", out, script, "--max_train_steps=4",
                    f"--output_dir={tmp_path / 'weights'}", "--mixed_precision=no"], check=True)
    steps = json.loads(out.read_text())
    assert len(steps["wall"]) == len(steps["cpu"]) == 4  # accelerate's wrapper is not a second step
    assert steps["wall"] == sorted(steps["wall"])


def test_reference_dir_must_hold_both_scripts(tmp_path):
    (tmp_path / REFERENCE_SCRIPTS["lora"]).write_text("")
    with pytest.raises(SystemExit, match=f"--reference-dir.*{REFERENCE_SCRIPTS['dreambooth']}"):
        train_speed.reference_dir(tmp_path)


def test_offline_download_says_how_to_run_offline(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(train_speed, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(SystemExit, match="pass --reference-dir"):
        train_speed.reference_dir(None)
    assert not list(tmp_path.rglob("*.py"))  # nothing half-written is taken for a script later


def test_end_to_end_on_the_tiny_model(tmp_path, fake_reference):
    out = tmp_path / "speed.json"
    train_speed.main(["--reference-dir", str(fake_reference), "--methods", "lora", "--steps", "3", "--warmup", "1",
                      "--repeats", "1", "--resolution", "32", "--out", str(out)])
    report = json.loads(out.read_text())
    lora = report["summary"]["lora"]
    for side in ("ours", "reference"):
        times = lora[side]
        assert times["steps_per_s"] > 0 and times["to_first_step_s"] > 0 and times["peak_rss_mib"] > 0
        assert times["to_exit_s"] >= times["to_weights_s"] > 0  # of the same (plain) run
        assert report["runs"]["lora"][side][0]["steps"] == 3
    assert lora["bare_step_s"] > 0 and lora["bare_fused_step_s"] > 0
    assert set(lora["ours"]["targets_met"]) == {"steady_speedup", "step_within_10pct_of_bare", "whole_run_speedup"}
    assert report["machine"]["torch_threads"] == 1 and report["machine"]["versions"]["diffusers"]


def test_import_time_is_summed_per_package():
    from profile_train import import_seconds_by_package

    importtime = ("import time: self [us] | cumulative | imported package\n"
                  "import time:       100 |        100 |     torch._C\n"
                  "import time:       200 |        300 |   torch\n"
                  "import time:        50 |        350 | dreamstudy.cli\n")
    seconds = import_seconds_by_package(importtime)
    assert seconds["torch"] == pytest.approx(300e-6) and seconds["dreamstudy"] == pytest.approx(50e-6)
