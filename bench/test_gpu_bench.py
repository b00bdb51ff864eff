"""The GPU bench (bench/gpu.py), run on a CPU at the tiny size with --quick: every section writes numbers,
and what a CPU cannot do (fp16, torch.compile with --quick, the published 16 GiB check) says why.

    python -m pytest -q bench/test_gpu_bench.py   (about a minute and a half on 2 cores)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_train_speed import FAKE_REFERENCE  # stands in for diffusers' scripts; the bench stops it once timed

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu-bench")
    reference = tmp / "reference"
    reference.mkdir()
    for name in ("train_dreambooth.py", "train_dreambooth_lora.py"):
        (reference / name).write_text(FAKE_REFERENCE)
    out = tmp / "gpu.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
               TQDM_DISABLE="1", CUDA_VISIBLE_DEVICES="")
    # A relative --reference-dir, as on the device machine: the scripts run in a folder of their own.
    done = subprocess.run([sys.executable, BENCH / "gpu.py", "--model", "tiny", "--quick", "--reference-dir",
                           reference.name, "--out", out], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def skipped(report, section, **config):
    return [s["reason"] for s in report["skipped"]
            if s["section"] == section and all(s["config"].get(k) == v for k, v in config.items())]


def test_runs_on_a_cpu_without_errors(report):
    assert report["errors"] == []
    assert report["machine"]["device"] == "cpu" and report["machine"]["versions"]["diffusers"]
    assert report["settings"]["model"] == "tiny" and report["settings"]["quick"]
    assert set(report["sections"]) == {"train", "memory", "sampling", "evaluation"}
    assert report["elapsed_s"] < report["settings"]["budget_s"]


def test_train_speed_of_ours_and_the_reference(report):
    rows = report["sections"]["train"]["rows"]
    for side in ("ours", "reference"):
        for method in ("lora", "dreambooth"):
            row = next(r for r in rows if (r["side"], r["method"], r["precision"]) == (side, method, "bf16")
                       and not r["gradient_checkpointing"])
            assert row["steps_per_s"] > 0 and row["steps"] == 4  # 1 warm-up + 3 timed
    ours = [r for r in rows if r["side"] == "ours"]
    assert {r["gradient_checkpointing"] for r in ours} == {False, True}
    assert all(r["speedup_vs_reference"] > 0 for r in ours if not r["gradient_checkpointing"])
    bare = [r for r in rows if r["side"] == "bare" and r["precision"] == "bf16"]
    assert {r["method"] for r in bare} == {"lora", "dreambooth"} and all(r["steps"] == 3 for r in bare)
    assert all(r["over_bare_step"] > -1 for r in ours if r["precision"] == "bf16" and not r["gradient_checkpointing"])
    assert all("fp16 needs a CUDA GPU" in reason for reason in skipped(report, "train", precision="fp16"))
    assert skipped(report, "reference", precision="fp16")
    assert report["sections"]["train"]["reference_scripts"]["sha256"]


def test_memory_table_of_every_method(report):
    memory = report["sections"]["memory"]
    rows = memory["rows"]
    assert {r["method"] for r in rows} == {"dreambooth", "lora", "textual_inversion", "custom_diffusion"}
    assert all(r["peak_mib"] >= 0 and r["measure"].startswith("peak RSS") for r in rows)
    assert {(r["gradient_checkpointing"], r["adam8bit"]) for r in rows} >= {(False, False), (True, False)}
    assert len(memory["table"]["rows"]) == 4 and len(memory["table"]["columns"]) == 7
    assert len(skipped(report, "memory", precision="fp16")) == 16  # 4 methods x gc x 8-bit, batch 1
    check = memory["published_check"]
    assert check["met"] is None and "GPU" in check["note"]


def test_sampling_with_and_without_compile(report):
    sampling = report["sections"]["sampling"]
    plain = [r for r in sampling["rows"] if not r["compile"]]
    assert sorted(r["batch"] for r in plain) == [1, 4, 16]
    assert all(r["images_per_s"] > 0 and r["steps"] == 50 and r["guidance"] == 7.5 for r in plain)
    assert len(skipped(report, "compile")) == 3
    targets = sampling["targets"]
    assert targets["no_compile"]["target_images_per_s"] == 1.0 and targets["compile"]["target_images_per_s"] == 1.5
    assert targets["no_compile"]["met"] is None  # a CPU at the tiny size says nothing about the GPU target
    assert report["targets"]["sampling"] == targets


def test_evaluation_throughput(report):
    (row,) = report["sections"]["evaluation"]["rows"]
    assert row["images"] > 0 and row["images_per_s_warm_cache"] > 0 and row["images_per_s_cold_cache"] > 0
