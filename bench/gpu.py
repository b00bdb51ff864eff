"""GPU benchmark of training, memory, sampling and evaluation at Stable Diffusion 1.5's size (issue 10).

    python bench/gpu.py [--model sd15-random|tiny] [--resolution 512] [--out results/bench/gpu.json]
                        [--reference-dir DIR] [--quick] [--budget SECONDS] [--sections ...]

On the random-init model of SD 1.5's exact architecture (`sd15-random`: UNet 859.5M parameters; its images
are noise, its compute is the real one), in one process, four sections:
 train       steady steps/s (median interval between optimizer steps after warm-up, bench/steptimer.py's
             hook) of our trainer, in-process, fresh components per config, for lora and dreambooth x
             fp16/bf16 x gradient checkpointing off/on, batch 1; and of diffusers' reference scripts
             (train_dreambooth.py, train_dreambooth_lora.py) as subprocesses, the same configs, stopped
             once they have taken the timed steps (their final save is not timed); and of the bare step
             (bench/bare_step.py: UNet forward + backward + fused AdamW, nothing else) without checkpointing;
 memory      peak GPU memory (torch.cuda.max_memory_allocated and _reserved, reset per config, less what
             was held before: the config's own) of 2 training steps for each of the 4 methods x fp16/bf16
             x batch 1/2/4 x gradient checkpointing x 8-bit Adam (where bitsandbytes imports), as a table;
             checked: DreamBooth with gradient checkpointing and 8-bit Adam under 16 GiB, as diffusers'
             README reports (15.8 GB, fp16, batch 1, 512 px);
 sampling    images/s of the sample stage's `render` (PNG files included), 50 DDIM steps, guidance 7.5, fp16,
             at batch 1, 4 and 16, without and with sample.compile (the library's `speed_up` with compile and
             channels_last: torch.compile of the UNet, default mode, fullgraph); targets at batch >= 4: 1.0
             image/s without compile, 1.5 with (A100/H100 class);
 evaluation  images/s of the evaluate stage (bench/eval_speed.py's synthetic study, random-init encoders).

Time: the run stays under --budget seconds (default 450, i.e. 7.5 minutes, from process start). Each section
gets a share of what is left when it starts (unused time passes on to the next); a config whose estimated
time (the last measured config of its kind, else a default) does not fit in what is left is skipped and
recorded with the reason, never started to overrun. Estimates on one H100/H200, fp16:
    setup       imports and CUDA ~15 s; sd15-random built on first use ~60 s (a fresh device machine has no
                cache); components loaded to the CPU ~10 s                                      ~85 s
    train       8 configs x 6-22 s (copy, cast, move, 25 steps at 2.3-5.5 steps/s; the first
                pays CUDA's start) and 4 bare ones x ~8 s (loading, 25 steps)                  18%  ~65 s
    reference   45-53 s a run (imports, loading 4.3 GB: ~40 s to the first step); fp16 first 20%  ~75 s
    memory      ~2.5 s a config (2 steps; was measured with the copy on the GPU: the CPU copy now
                adds its time, a few s); 96 configs need >4 min: the grid is ordered (the
                published check first, then fp16, batch 1, ...) and the rest is skipped     22%  ~80 s
    sampling    pipeline load ~10 s; 8 images at batch 1, 8 at 4, 16 at 16 at 0.5-2.6 img/s 10%  ~35 s
    compile     ~70 s of compilation and timing per batch size; batch 4, then 16, then 1   22%  ~80 s
    evaluation  48 images at 512 px, cold and warm cache, encoders loaded                     8%  ~12 s
(measured on one H200, 2026-11-30: the first full run took 386 s, the budget skipping 60 memory configs
and compiled sampling at batch 1 and 16.)
On a CPU (`--model tiny`) everything runs at the tiny size: fp16 is skipped (it needs CUDA), fp32 and bf16
run, memory is the peak resident set size (reset per config through /proc/self/clear_refs), and with --quick
torch.compile is skipped (compiling on a CPU takes minutes) and every section does a few steps (the test,
bench/test_gpu_bench.py, about a minute and a half on 2 cores).

The reference scripts: --reference-dir, else the cache folder bench/train_speed.py fills
(~/.cache/dreamstudy/bench/diffusers-v<installed diffusers>/), else build/reference/ in this repository;
without them the reference runs are skipped with that reason (the device machine has no internet).

GPU benchmark on the device machine (one H200, no internet, no diffusers, Python 3.12, 15 minutes of device
time a session, 10 a command). Once, here, fill build/reference/ (git-ignored, ~33 MB; never commit it):
    build/reference/train_dreambooth.py, train_dreambooth_lora.py, SOURCE.txt   diffusers' examples/dreambooth/
        scripts (`git show <tag>:examples/dreambooth/...` of a huggingface/diffusers clone), and where from
    build/reference/wheels/   `python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d
        build/reference/wheels diffusers==0.42.1 transformers==5.23.0 peft==0.21.2 pydantic==2.13.4
        pydantic_core==2.46.4 annotated_types==0.7.0 typing_inspection==0.4.2 open_clip_torch==3.3.0
        ftfy==6.3.1 wcwidth==0.7.0 lpips==0.1.4`
    build/reference/site/     bitsandbytes 0.50.2's wheel unpacked, less its libraries for CUDA < 13 and
        ROCm/XPU (43 MB -> 8 MB: the whole wheel would not fit the 64 MiB the tool carries)
then call the device tool's `run` with carry ["build/reference"] and timeout_s 600 (the run takes ~8 min):
    set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target
    /tmp/site build/reference/wheels/*.whl && cp -r build/reference/site/. /tmp/site/ && export
    PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 TQDM_DISABLE=1 && python3 bench/gpu.py --reference-dir
    build/reference --out $OUT/gpu.json 2>&1 | tee $OUT/gpu.log
(one line; gpu.json and gpu.log come back). A second try in the same session has ~5 minutes: pass
--budget 240 --sections of what is missing.

Writes JSON: machine (GPU, versions), settings, each section's rows, the targets and whether they are met,
and every skipped config with its reason.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import copy
import ctypes
import dataclasses
import gc
import hashlib
import json
import math
import os
import platform
import re
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path

import bare_step
import numpy as np
import steptimer
import torch
from PIL import Image
from torch.optim.optimizer import register_optimizer_step_post_hook
from train_speed import REFERENCE_SCRIPTS, cpu_model, steady

from dreamstudy.layout import cache_dir
from dreamstudy.methods.registry import get_method
from dreamstudy.methods.trainer import Concept, Examples, Hardware, train
from dreamstudy.models.loading import load_components, load_pipeline, resolve_pretrained
from dreamstudy.params import METHODS, load_params
from dreamstudy.sampling.sample import render, speed_up, use_scheduler

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MIB, GIB = 2**20, 2**30
VERSIONS = ("torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes", "open_clip_torch", "timm")
IDENTIFIER, CLASS_NAME = "sks", "dog"
CAPTION = f"a photo of {IDENTIFIER} {CLASS_NAME}"
NEVER = 10**9  # the reference scripts' checkpoint interval
SPEED_METHODS = tuple(REFERENCE_SCRIPTS)  # lora, dreambooth: the methods diffusers has a reference script of
BATCHES = (1, 2, 4)  # memory section
SAMPLE_BATCHES = (1, 4, 16)
COMPILE_ORDER = (4, 16, 1)  # the target is at batch >= 4: those first
SAMPLE_STEPS, GUIDANCE = 50, 7.5
TARGETS = {"sampling_images_per_s": {"no_compile": 1.0, "compile": 1.5, "min_batch": 4},
           "dreambooth_gc_8bit_peak_gib": 16.0}
# Share of the time left when a section starts; a section absent from --sections passes its share on.
SHARES = {"train": 0.18, "reference": 0.20, "memory": 0.22, "sampling": 0.10, "compile": 0.22, "evaluation": 0.08}
SECTIONS = ("train", "memory", "sampling", "evaluation")  # --sections; train includes reference, sampling compile
SLACK_S = 5.0  # kept free at the end: writing the report, the interpreter's exit


@dataclasses.dataclass(frozen=True)
class Scale:
    """What a run does at its scale: the GPU study (sd15-random) or a CPU check (tiny, --quick)."""

    warmup: int            # train steps left out of the steady state
    timed: int             # train steps timed after them
    memory_steps: int
    memory_batches: tuple[int, ...]
    min_sample_images: int  # per batch size, at least one call
    eval_subjects: int
    eval_prompts: int
    eval_resolution: int
    estimates: dict        # seconds of a config of each kind before one was measured


GPU_SCALE = Scale(5, 20, 2, BATCHES, 8, 2, 2, 512,
                  {"train": 15, "reference": 40, "memory": 6, "sample_image": 1.5, "compile": 90, "evaluation": 30})
CPU_SCALE = Scale(3, 10, 2, BATCHES, 4, 2, 2, 128,
                  {"train": 5, "reference": 20, "memory": 3, "sample_image": 0.1, "compile": 120, "evaluation": 30})
QUICK_SCALE = Scale(1, 3, 1, (1,), 2, 1, 1, 64,
                    {"train": 3, "reference": 15, "memory": 2, "sample_image": 0.1, "compile": 120, "evaluation": 20})


class Skip(Exception):
    """A config that cannot run here, with the reason (recorded, not an error)."""


# ---------------------------------------------------------------------------------------------- time budget

class Budget:
    """The run's deadline, each section's share of the time left, and what was skipped and why."""

    def __init__(self, total_s: float, sections: list[str]):
        self.start = time.monotonic()
        self.deadline = self.start + total_s - SLACK_S
        self.shares = {name: share for name, share in SHARES.items() if name in sections}
        self.skipped: list[dict] = []
        self.errors: list[dict] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def section(self, name: str) -> Section:
        share = self.shares.pop(name)
        left = max(self.deadline - time.monotonic(), 0.0)
        return Section(name, self, left * share / (share + sum(self.shares.values())))


class Section:
    """One section's rows, and the time it may take: until its share runs out, or the run's deadline."""

    def __init__(self, name: str, budget: Budget, seconds: float):
        self.name, self.budget, self.seconds = name, budget, seconds
        self.until = time.monotonic() + seconds
        self.costs: dict[str, float] = {}  # kind -> seconds of its last config
        self.rows: list[dict] = []

    def estimate(self, kind: str, default: float) -> float:
        """The last config of this kind took, else the slowest config so far, else `default`."""
        return self.costs.get(kind, max(self.costs.values(), default=default))

    def run(self, config: dict, kind: str, estimate: float, work) -> dict | None:
        """`work()` -> row (config joins it), unless its estimate does not fit: then skipped with the reason.
        A Skip it raises is recorded as such; any other failure as an error, and the run goes on."""
        left = min(self.until, self.budget.deadline) - time.monotonic()
        if estimate > left:
            self.skip(config, f"time budget: ~{estimate:.0f} s needed, {max(left, 0):.0f} s left of the "
                              f"section's {self.seconds:.0f} s")
            return None
        start = time.monotonic()
        try:
            row = config | work()
        except Skip as reason:
            self.skip(config, str(reason))
            return None
        except Exception as err:  # noqa: BLE001 (one failed config must not lose a GPU run's other numbers)
            self.budget.errors.append({"section": self.name, "config": config, "error": f"{type(err).__name__}: {err}",
                                       "traceback": traceback.format_exc(limit=-3)})
            print(f"[{self.name}] {label(config)}: ERROR {type(err).__name__}: {err}", flush=True)
            return None
        finally:
            self.costs[kind] = time.monotonic() - start
            free_memory()
        row["seconds"] = round(time.monotonic() - start, 2)
        self.rows.append(row)
        print(f"[{self.name}] {label(config)}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                             for k, v in row.items() if k not in config), flush=True)
        return row

    def skip(self, config: dict, reason: str) -> None:
        self.budget.skipped.append({"section": self.name, "config": config, "reason": reason})
        print(f"[{self.name}] {label(config)}: skipped ({reason})", flush=True)

    def report(self, **extra) -> dict:
        return {"budget_s": round(self.seconds, 1), "rows": self.rows} | extra


def label(config: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


# ------------------------------------------------------------------------------------------------- memory

def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    elif LIBC is not None:
        LIBC.malloc_trim(0)  # freed heap back to the system: the resident set is then what is in use


def load_libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


LIBC = load_libc()


def rss_mib(field: str) -> float:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


def reset_peak_rss() -> bool:
    """Reset the process's peak resident set size (Linux: writing 5 to clear_refs); False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of the block, less what was held before it (what the block itself needs): CUDA's
    allocated and reserved bytes on a GPU, the resident set size on a CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __enter__(self) -> PeakMemory:
        free_memory()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
        else:
            self.resets = reset_peak_rss()
            self.before = rss_mib("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            allocated, reserved = self.before
            self.row = {"peak_mib": (torch.cuda.max_memory_allocated() - allocated) / MIB,
                        "peak_reserved_mib": (torch.cuda.max_memory_reserved() - reserved) / MIB,
                        "held_before_mib": allocated / MIB, "measure": "cuda max_memory_allocated"}
        else:
            self.row = {"peak_mib": rss_mib("VmHWM") - self.before, "held_before_mib": self.before,
                        "measure": "peak RSS" if self.resets else "peak RSS since the process started"}


# -------------------------------------------------------------------------------------------------- context

@dataclasses.dataclass
class Bench:
    """What every section shares."""

    args: argparse.Namespace
    scale: Scale
    device: str
    model_folder: str
    root: Path          # temporary folder
    examples: Examples  # the training images (noise) with their caption
    train_params: object
    budget: Budget
    pristine: object = None  # models.loading.Components on the CPU, copied per config
    reference: tuple[Path, str] | None = None

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def precisions(self) -> tuple[str, ...]:
        # fp16 stays listed on a CPU: its configs are then skipped with Hardware's reason
        return ("fp16", "bf16") if self.cuda or self.args.quick else ("fp16", "bf16", "fp32")


def training_images(folder: Path, resolution: int, count: int = max(BATCHES)) -> Examples:
    """`count` noise images (as many as the largest batch: every batch is full)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(count):
        Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    return Examples([(path, CAPTION) for path in sorted(folder.glob("*.png"))])


def find_reference(given: Path | None) -> tuple[Path, str] | None:
    """(folder of diffusers' two scripts, where they came from), or None: never downloads (the device has
    no internet)."""
    candidates = [given] if given else [cache_dir() / "bench" / f"diffusers-v{version('diffusers')}",
                                        REPO / "build" / "reference"]
    for folder in candidates:
        if all((folder / name).is_file() for name in REFERENCE_SCRIPTS.values()):
            source = folder / "SOURCE.txt"
            # Absolute: the reference scripts run with a temporary folder as their working directory.
            return folder.resolve(), source.read_text().strip() if source.is_file() else str(folder)
    if given:
        sys.exit(f"error: --reference-dir {given} lacks {' or '.join(REFERENCE_SCRIPTS.values())} "
                 "(diffusers' examples/dreambooth/ scripts)")
    return None


# ----------------------------------------------------------------------------------------------- training

def train_config(bench: Bench, method: str, precision: str, batch: int, gc_on: bool, adam8: bool,
                 steps: int) -> tuple[dict, dict]:
    """Our trainer on a fresh copy of the components: (optimizer-step times, peak memory row)."""
    try:
        hardware = Hardware(precision, gc_on, adam8)
    except ValueError as err:  # fp16 without CUDA, 8-bit Adam without bitsandbytes
        raise Skip(str(err)) from None
    method_obj, schedule = get_method(method, bench.train_params)
    schedule = dataclasses.replace(schedule, steps=steps, batch_size=batch, prior_preservation=False)
    steptimer.WALL.clear()
    steptimer.CPU.clear()
    with PeakMemory(bench.device) as peak:
        start = time.time()
        parts = copy.deepcopy(bench.pristine)
        train(method_obj, schedule, parts, [Concept(bench.examples, IDENTIFIER, CLASS_NAME)],
              resolution=bench.args.resolution, seed=0, hardware=hardware)
        del parts
    return {"wall": list(steptimer.WALL), "cpu": list(steptimer.CPU), "start": start,
            "torch_threads": torch.get_num_threads()}, peak.row


def speed_row(steps: dict, warmup: int) -> dict:
    if len(steps["wall"]) < warmup + 2:
        raise RuntimeError(f"{len(steps['wall'])} optimizer steps timed, {warmup + 2} needed")
    row = steady(steps, warmup)
    return {"steps_per_s": 1 / row["step_s"], "step_s": row["step_s"], "to_first_step_s": row["to_first_step_s"],
            "steps": row["steps"]}


def speed_configs(bench: Bench) -> list[dict]:
    return [{"method": m, "precision": p, "gradient_checkpointing": g}
            for p in bench.precisions for g in (False, True) for m in SPEED_METHODS]


def train_section(bench: Bench, section: Section) -> None:
    scale = bench.scale
    for config in speed_configs(bench):
        def work(config=config):
            steps, peak = train_config(bench, config["method"], config["precision"], 1,
                                       config["gradient_checkpointing"], False, scale.warmup + scale.timed)
            return speed_row(steps, scale.warmup) | {k: v for k, v in peak.items() if k.startswith("peak")}

        section.run({"side": "ours"} | config, f"ours-{config['method']}",
                    section.estimate(f"ours-{config['method']}", scale.estimates["train"]), work)
        if not config["gradient_checkpointing"]:
            section.run({"side": "bare"} | config, "bare", section.estimate("bare", scale.estimates["train"]),
                        lambda config=config: bare_run(bench, config))


def bare_run(bench: Bench, config: dict) -> dict:
    """bench/bare_step.py's UNet forward + backward + fused AdamW step, nothing else, on the same model: what
    our step is held to (within 10%)."""
    if config["precision"] == "fp16" and not bench.cuda:
        raise Skip("fp16 needs a CUDA GPU")
    times = bare_step.step_times(bench.model_folder, config["method"], bench.args.resolution, bench.scale.timed,
                                 bench.scale.warmup, fused=True, mixed_precision=config["precision"])
    step_s = statistics.median(times["wall"])
    return {"steps_per_s": 1 / step_s, "step_s": step_s, "steps": len(times["wall"])}


def reference_command(bench: Bench, config: dict, steps: int, out: Path) -> list:
    script = bench.reference[0] / REFERENCE_SCRIPTS[config["method"]]
    method, schedule = get_method(config["method"], bench.train_params)
    command = [sys.executable, Path(__file__).resolve(), "--steptimer", out / "steps.json", steps, script,
               f"--pretrained_model_name_or_path={bench.model_folder}",
               f"--instance_data_dir={bench.examples.items[0].image.parent}", f"--instance_prompt={CAPTION}",
               f"--resolution={bench.args.resolution}", "--train_batch_size=1", f"--max_train_steps={steps + 1}",
               f"--checkpointing_steps={NEVER}", f"--learning_rate={schedule.lr}", "--seed=0",
               f"--output_dir={out / 'weights'}",
               f"--mixed_precision={'no' if config['precision'] == 'fp32' else config['precision']}"]
    if config["gradient_checkpointing"]:
        command.append("--gradient_checkpointing")
    if config["method"] == "lora":
        command.append(f"--rank={method.rank}")
    return [str(part) for part in command]


def reference_run(bench: Bench, config: dict) -> dict:
    if config["precision"] == "fp16" and not bench.cuda:
        raise Skip("fp16 needs a CUDA GPU (accelerate refuses it on a CPU)")
    steps = bench.scale.warmup + bench.scale.timed
    out = Path(tempfile.mkdtemp(dir=bench.root, prefix="reference-"))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    if not bench.cuda:  # the tiny model's ops are too small to split across threads (as our side)
        env |= {"OMP_NUM_THREADS": str(torch.get_num_threads()), "MKL_NUM_THREADS": str(torch.get_num_threads())}
    log = out / "log.txt"
    start = time.time()
    with log.open("w") as handle:
        done = subprocess.run(reference_command(bench, config, steps, out), stdout=handle, stderr=subprocess.STDOUT,
                              env=env, cwd=out)
    if done.returncode:
        tail = "\n".join(log.read_text().splitlines()[-5:])
        raise RuntimeError(f"{REFERENCE_SCRIPTS[config['method']]} exit {done.returncode}: {tail}")
    record = json.loads((out / "steps.json").read_text()) | {"start": start}
    row = speed_row(record, bench.scale.warmup)
    if record.get("cuda_peak_mib") is not None:
        row["peak_mib"] = record["cuda_peak_mib"]
    return row


def reference_section(bench: Bench, section: Section) -> None:
    configs = speed_configs(bench)
    # fp16 (or a CPU's first runnable precision) first: the time left may not reach bf16
    for config in configs:
        side = {"side": "reference"} | config
        if bench.reference is None:
            section.skip(side, "no reference scripts: pass --reference-dir with diffusers' train_dreambooth.py "
                               "and train_dreambooth_lora.py (none found in the cache or build/reference/)")
            continue
        if bench.args.quick and config["gradient_checkpointing"]:
            section.skip(side, "--quick: the reference scripts run without gradient checkpointing only")
            continue
        section.run(side, "reference", section.estimate("reference", bench.scale.estimates["reference"]),
                    lambda config=config: reference_run(bench, config))


def compare_sides(rows: list[dict]) -> None:
    """Our steady steps/s over the reference script's, and our step's time over the bare step's, on the same
    config."""
    by_side = {(r["side"], r["method"], r["precision"], r["gradient_checkpointing"]): r for r in rows}
    for row in rows:
        config = (row["method"], row["precision"], row["gradient_checkpointing"])
        if row["side"] != "ours":
            continue
        if ("reference", *config) in by_side:
            row["speedup_vs_reference"] = by_side["reference", *config]["step_s"] / row["step_s"]
        if ("bare", *config) in by_side:
            row["over_bare_step"] = row["step_s"] / by_side["bare", *config]["step_s"] - 1


def steptimer_main(argv: list[str]) -> None:
    """`gpu.py --steptimer OUT STEPS SCRIPT ARGS...`: run SCRIPT as __main__ under steptimer's hook and end the
    process after STEPS optimizer steps, writing their times (and the CUDA peak memory): the rest of the run
    (the final save of 4 GB of weights) is not what is measured."""
    out, steps, script = Path(argv[0]), int(argv[1]), argv[2]

    def write() -> None:
        peak = torch.cuda.max_memory_allocated() / MIB if torch.cuda.is_initialized() else None
        out.write_text(json.dumps({"wall": steptimer.WALL, "cpu": steptimer.CPU,
                                   "torch_threads": torch.get_num_threads(), "cuda_peak_mib": peak}))

    def note(optimizer, args, kwargs) -> None:
        steptimer.note_step(optimizer, args, kwargs)
        if len(steptimer.WALL) >= steps:
            write()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    register_optimizer_step_post_hook(note)
    atexit.register(write)  # a script that ends before STEPS steps
    sys.argv = [script, *argv[3:]]
    sys.path[0] = str(Path(script).resolve().parent)  # as `python SCRIPT` would have it
    runpy.run_path(script, run_name="__main__")


# ------------------------------------------------------------------------------------------------- memory

def memory_configs(bench: Bench) -> list[dict]:
    """Every config, the published check first, then by importance: fp16 before bf16, smaller batches, ..."""
    configs = [{"method": m, "precision": p, "batch": b, "gradient_checkpointing": g, "adam8bit": a}
               for p in bench.precisions for b in bench.scale.memory_batches for m in METHODS
               for g in (False, True) for a in (False, True)]
    published = {"method": "dreambooth", "precision": "fp16", "batch": 1, "gradient_checkpointing": True,
                 "adam8bit": True}
    return sorted(configs, key=lambda c: c != published)  # stable: the rest keep their order


def memory_section(bench: Bench, section: Section) -> None:
    for config in memory_configs(bench):
        def work(c=config):
            _, peak = train_config(bench, c["method"], c["precision"], c["batch"], c["gradient_checkpointing"],
                                   c["adam8bit"], bench.scale.memory_steps)
            return peak

        kind = f"{config['method']}-{config['batch']}"
        section.run(config, kind, section.estimate(kind, bench.scale.estimates["memory"]), work)


def memory_table(rows: list[dict]) -> dict:
    """Peak MiB as a table: one line per method, precision and batch; a column per switch pair."""
    columns = [(g, a) for g in (False, True) for a in (False, True)]
    names = [f"{'gc' if g else 'no gc'}, {'8-bit Adam' if a else 'AdamW'}" for g, a in columns]
    cells = collections.defaultdict(dict)
    for r in rows:
        cells[(r["method"], r["precision"], r["batch"])][(r["gradient_checkpointing"], r["adam8bit"])] = r["peak_mib"]
    lines = [[*key, *(round(cells[key][c]) if c in cells[key] else None for c in columns)] for key in cells]
    return {"unit": "MiB", "columns": ["method", "precision", "batch", *names], "rows": lines}


def published_check(bench: Bench, rows: list[dict]) -> dict:
    limit = TARGETS["dreambooth_gc_8bit_peak_gib"]
    check = {"what": f"DreamBooth, fp16, batch 1, gradient checkpointing and 8-bit Adam under {limit:g} GiB at "
                     "512 px (diffusers' README: 15.8 GB on a 16 GB GPU)", "limit_gib": limit, "met": None}
    match = [r for r in rows if (r["method"], r["precision"], r["batch"], r["gradient_checkpointing"],
                                 r["adam8bit"]) == ("dreambooth", "fp16", 1, True, True)]
    if not bench.cuda or bench.args.model != "sd15-random" or bench.args.resolution != 512:
        return check | {"note": "needs sd15-random at 512 px on a GPU"}
    if not match:
        return check | {"note": "not measured (skipped: see skipped)"}
    peak = match[0]["peak_reserved_mib"] / 1024  # reserved: what the card must have, CUDA's context aside
    return check | {"peak_reserved_gib": peak, "peak_allocated_gib": match[0]["peak_mib"] / 1024,
                    "met": peak < limit}


# ----------------------------------------------------------------------------------------------- sampling

Spec = collections.namedtuple("Spec", "prompt seed file")


def timed_render(bench: Bench, pipe, batch: int) -> dict:
    """A 2-step call (cuDNN's and, compiled, torch.compile's first run of this shape), then calls of 50 steps
    until at least min_sample_images images."""
    folder = Path(tempfile.mkdtemp(dir=bench.root, prefix="samples-"))
    calls = max(1, math.ceil(bench.scale.min_sample_images / batch))
    specs = [Spec(f"a photo of a {CLASS_NAME} number {k}", k, f"{k:03d}.png") for k in range(batch * calls)]
    settings = dict(resolution=bench.args.resolution, guidance_scale=GUIDANCE, batch_size=batch)
    render(pipe, specs[:batch], folder, num_inference_steps=2, **settings)
    free_memory()
    start = time.perf_counter()
    render(pipe, specs, folder, num_inference_steps=SAMPLE_STEPS, **settings)
    if bench.cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"images": len(specs), "images_per_s": len(specs) / seconds, "seconds_per_call": seconds / calls}


def sampling_sections(bench: Bench, plain: Section, compiled: Section | None) -> dict:
    dtype = torch.float16 if bench.cuda else torch.float32  # CPUs have no fast fp16 kernels
    start = time.monotonic()
    pipe = load_pipeline(bench.args.model, torch_dtype=dtype, device=bench.device)
    use_scheduler(pipe, "ddim")
    speed_up(pipe, compile=False, channels_last=False)  # the sample stage's defaults
    load_s = time.monotonic() - start
    base = {"dtype": str(dtype).removeprefix("torch."), "steps": SAMPLE_STEPS, "guidance": GUIDANCE}
    per_image = bench.scale.estimates["sample_image"]
    for batch in SAMPLE_BATCHES:
        config = base | {"compile": False, "batch": batch}
        rate = max((r["images_per_s"] for r in plain.rows), default=1 / per_image)
        images = batch * max(1, math.ceil(bench.scale.min_sample_images / batch))
        plain.run(config, "sample", images / rate * 1.2 + 2, lambda b=batch: timed_render(bench, pipe, b))
    if compiled is not None:
        if not bench.cuda and bench.args.quick:
            for batch in COMPILE_ORDER:
                compiled.skip(base | {"compile": True, "batch": batch},
                              "torch.compile on a CPU skipped with --quick (compiling takes minutes)")
        else:
            speed_up(pipe, compile=True, channels_last=True)  # sample.compile and sample.channels_last
            for batch in COMPILE_ORDER:
                config = base | {"compile": True, "channels_last": True, "batch": batch}
                compiled.run(config, "compile", compiled.estimate("compile", bench.scale.estimates["compile"]),
                              lambda b=batch: timed_render(bench, pipe, b))
    return {"load_pipeline_s": load_s}


def sampling_targets(rows: list[dict], cuda: bool) -> dict:
    """Met where every measured batch >= 4 reaches the target (None: nothing measured, or not on a GPU)."""
    spec = TARGETS["sampling_images_per_s"]
    out = {}
    for key, compiled in (("no_compile", False), ("compile", True)):
        rates = [r["images_per_s"] for r in rows if r["compile"] == compiled and r["batch"] >= spec["min_batch"]]
        met = min(rates) >= spec[key] if rates and cuda else None
        out[key] = {"target_images_per_s": spec[key], "at_batch": f">= {spec['min_batch']}",
                    "measured": rates, "met": met}
    return out


# --------------------------------------------------------------------------------------------- evaluation

def evaluation_run(bench: Bench) -> dict:
    try:
        import eval_speed

        from dreamstudy.data.dreambench import SUBJECTS
        from dreamstudy.metrics.encoders import load_encoders
    except ImportError as err:
        raise Skip(f"the evaluate stage's packages are missing: {err}") from None
    scale = bench.scale
    root = Path(tempfile.mkdtemp(dir=bench.root, prefix="eval-"))
    runs = eval_speed.build_study(root, sorted(SUBJECTS)[:scale.eval_subjects], scale.eval_prompts,
                                  scale.eval_resolution)
    start = time.perf_counter()
    encoders = load_encoders(pretrained=False, device=bench.device, seed=0)
    load_s = time.perf_counter() - start
    batch = 32
    cold, samples = eval_speed.timed_evaluation(root, runs, encoders, batch, root / "cache")
    warm, _ = eval_speed.timed_evaluation(root, runs, encoders, batch, root / "cache")
    images = samples + len(runs) * eval_speed.PRES_PER_RUN
    return {"images": images, "resolution": scale.eval_resolution, "batch_size": batch,
            "images_per_s_cold_cache": images / cold, "images_per_s_warm_cache": images / warm,
            "load_encoders_s": load_s, "encoders": "random init (the real architectures)"}


# ------------------------------------------------------------------------------------------------- report

def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_info(device: str) -> dict:
    info = {"device": device, "cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": {name: package_version(name) for name in VERSIONS},
            "bitsandbytes_importable": find_spec("bitsandbytes") is not None}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info |= {"gpu": props.name, "gpu_memory_gib": props.total_memory / GIB,
                 "compute_capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}
    return info


def print_tables(report: dict) -> None:
    sections = report["sections"]
    if "train" in sections:
        print("\ntrain: steady steps/s (batch 1)")
        for r in sections["train"]["rows"]:
            speedup = f"  {r['speedup_vs_reference']:.2f}x reference" if "speedup_vs_reference" in r else ""
            speedup += f"  {100 * r['over_bare_step']:+.1f}% over bare" if "over_bare_step" in r else ""
            peak = f"{r['peak_mib']:8.0f} MiB" if "peak_mib" in r else " " * 12
            print(f"  {r['side']:9} {r['method']:10} {r['precision']:4} gc={r['gradient_checkpointing']!s:5} "
                  f"{r['steps_per_s']:7.2f} steps/s  peak {peak}{speedup}")
    if "memory" in sections:
        table = sections["memory"]["table"]
        print(f"\nmemory: peak {table['unit']} of a training step ({sections['memory']['measure']})")
        widths = [17, 9, 5] + [18] * (len(table["columns"]) - 3)
        for line in [table["columns"], *table["rows"]]:
            print("  " + " | ".join(f"{'-' if v is None else v:>{w}}" for v, w in zip(line, widths, strict=True)))
        check = sections["memory"]["published_check"]
        print(f"  {check['what']}: met={check['met']} {check.get('note', '')}")
    if "sampling" in sections:
        print(f"\nsampling: images/s, {SAMPLE_STEPS} DDIM steps, guidance {GUIDANCE}")
        for r in sections["sampling"]["rows"]:
            print(f"  compile={r['compile']!s:5} batch {r['batch']:2}  {r['images_per_s']:7.3f} images/s")
        for key, t in sections["sampling"]["targets"].items():
            print(f"  target {key}: {t['target_images_per_s']} images/s at batch {t['at_batch']}: met={t['met']}")
    if "evaluation" in sections:
        for r in sections["evaluation"]["rows"]:
            print(f"\nevaluation: {r['images_per_s_warm_cache']:.2f} images/s (warm cache), "
                  f"{r['images_per_s_cold_cache']:.2f} (cold), {r['images']} images at {r['resolution']} px")
    print(f"\n{len(report['skipped'])} configs skipped, {len(report['errors'])} errors; "
          f"{report['elapsed_s']:.0f} s in all")


def run_sections(bench: Bench, wanted: list[str]) -> dict:
    scale, budget, sections = bench.scale, bench.budget, {}
    if "train" in wanted or "memory" in wanted:
        start = time.monotonic()
        # on the CPU, float32 as loaded: each config's copy is cast and moved by the trainer, as in the train
        # stage, so PeakMemory counts what a user's GPU holds (a float32 copy on the GPU would count 4 GiB more)
        bench.pristine = load_components(bench.args.model)
        load_s = time.monotonic() - start
    if "train" in wanted:
        ours = budget.section("train")
        train_section(bench, ours)
        reference = budget.section("reference")
        reference_section(bench, reference)
        rows = ours.rows + reference.rows
        compare_sides(rows)
        sections["train"] = {"budget_s": {"ours": ours.seconds, "reference": reference.seconds}, "rows": rows,
                             "warmup_steps": scale.warmup, "timed_steps": scale.timed, "batch": 1,
                             "load_components_s": load_s,
                             "reference_scripts": None if bench.reference is None else {
                                 "folder": str(bench.reference[0]), "source": bench.reference[1],
                                 "sha256": {n: hashlib.sha256((bench.reference[0] / n).read_bytes()).hexdigest()
                                            for n in REFERENCE_SCRIPTS.values()}}}
    if "memory" in wanted:
        memory = budget.section("memory")
        memory_section(bench, memory)
        sections["memory"] = memory.report(
            steps=scale.memory_steps, measure="CUDA allocated/reserved" if bench.cuda else "peak RSS",
            table=memory_table(memory.rows), published_check=published_check(bench, memory.rows))
    bench.pristine = None
    free_memory()
    if "sampling" in wanted:
        plain = budget.section("sampling")
        compiled = budget.section("compile")
        extra = sampling_sections(bench, plain, compiled)
        rows = plain.rows + compiled.rows
        sections["sampling"] = {"budget_s": {"plain": plain.seconds, "compile": compiled.seconds}, "rows": rows,
                                "targets": sampling_targets(rows, bench.cuda)} | extra
    if "evaluation" in wanted:
        evaluation = budget.section("evaluation")
        evaluation.run({"device": bench.device}, "evaluation", scale.estimates["evaluation"],
                       lambda: evaluation_run(bench))
        sections["evaluation"] = evaluation.report()
    return sections


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sd15-random", help="sd15-random (default) or tiny (CPU check)")
    parser.add_argument("--resolution", type=int, help="px (default: 512; 32 for tiny)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "gpu.json")
    parser.add_argument("--reference-dir", type=Path, help="folder with diffusers' train_dreambooth.py and "
                        "train_dreambooth_lora.py (default: the cache's, else build/reference/, else none)")
    parser.add_argument("--quick", action="store_true", help="a few steps per section (the CPU test)")
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default 450; 300 with --quick)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    args = parser.parse_args(argv)
    args.resolution = args.resolution or (512 if args.model != "tiny" else 32)
    args.budget = args.budget or (300.0 if args.quick else 450.0)
    return args


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--steptimer"]:
        return steptimer_main(argv[1:])
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scale = QUICK_SCALE if args.quick else GPU_SCALE if device == "cuda" else CPU_SCALE
    wanted = list(args.sections)
    budget = Budget(args.budget, wanted + (["reference"] if "train" in wanted else [])
                    + (["compile"] if "sampling" in wanted else []))
    register_optimizer_step_post_hook(steptimer.note_step)  # our trainer's steps, in this process

    start = time.monotonic()
    model_folder = resolve_pretrained(args.model)  # builds sd15-random on first use (about a minute)
    setup = {"resolve_model_s": time.monotonic() - start}
    with tempfile.TemporaryDirectory(prefix="dreamstudy-gpu-bench-") as tmp:
        root = Path(tmp)
        bench = Bench(args, scale, device, model_folder, root, training_images(root / "instances", args.resolution),
                      load_params(REPO / "params.yaml").train, budget, reference=find_reference(args.reference_dir))
        sections = run_sections(bench, wanted)
    report = {
        "machine": machine_info(device),
        "settings": {"model": args.model, "model_folder": model_folder, "resolution": args.resolution,
                     "quick": args.quick, "budget_s": args.budget, "sections": wanted,
                     "scale": dataclasses.asdict(scale), "train_params": "params.yaml (rank, lr)",
                     "images": "noise, as many as the largest batch", "caption": CAPTION},
        "setup": setup,
        "sections": sections,
        "targets": {"sampling": sections.get("sampling", {}).get("targets"),
                    "memory": sections.get("memory", {}).get("published_check")},
        "skipped": budget.skipped,
        "errors": budget.errors,
        "elapsed_s": budget.elapsed(),
    }
    print_tables(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
