"""Training speed of our `train` stage against diffusers' reference DreamBooth scripts (issue "speed and memory").

    python bench/train_speed.py [--reference-dir DIR] [--methods lora dreambooth] [--steps 200] [--repeats 3]
                                [--pretrained tiny|sd15-random|FOLDER] [--mixed-precision fp32|bf16|fp16]

On the tiny model at 64 px by default (sd15-random: SD 1.5's size), batch 1, the same model folder, images,
precision and torch threads for every side:
 (a) steady-state steps/s: the median interval between optimizer steps after warm-up, taken by a
     global optimizer-step hook (bench/steptimer.py), and the bare UNet forward+backward+AdamW step of
     the same batch (bench/bare_step.py) as the floor;
 (b) a whole run of --steps steps, from process start to the saved weights' mtime; ours is the DVC
     stage, `python stages/train.py`, in a temporary working folder laid out as the DAG leaves it.
Runs alternate between the sides, so load from other processes falls on both; CPU seconds are kept
next to wall seconds because they are far less sensitive to that load. Prints a table and writes
everything, with machine info, to results/bench/train_speed.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

import yaml

from dreamstudy.data.fetch import fetch_dreambench
from dreamstudy.layout import DATASET, Layout
from dreamstudy.models.loading import cache_dir, resolve_pretrained
from dreamstudy.params import METHODS
from dreamstudy.trainset import read_training_set, write_prior_set

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
REFERENCE_SCRIPTS = {"lora": "train_dreambooth_lora.py", "dreambooth": "train_dreambooth.py"}
REFERENCE_URL = "https://raw.githubusercontent.com/huggingface/diffusers/v{version}/examples/dreambooth/{name}"
NEVER = 10**9  # checkpoint interval that never comes, for both sides
TARGET_SPEEDUP = 1.2  # ours vs reference, steady steps/s and whole run (the issue)
TARGET_BARE_OVERHEAD = 0.10  # our step at most 10% slower than the bare step
LAYOUT = Layout()  # the main study's folders
STRATEGY = "none"  # the original images, as the reference scripts train on them
ACCELERATE_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # ours -> the scripts' --mixed_precision
VERSIONS = ("torch", "diffusers", "transformers", "peft", "accelerate", "dvclive")


def reference_dir(given: Path | None) -> tuple[Path, str]:
    """The folder with diffusers' two scripts and where they came from: --reference-dir, or downloaded
    once (tag of the installed diffusers) into the cache."""
    if given is not None:
        missing = [name for name in REFERENCE_SCRIPTS.values() if not (given / name).is_file()]
        if missing:
            sys.exit(f"error: --reference-dir {given} lacks {', '.join(missing)} "
                     "(diffusers' examples/dreambooth/ scripts)")
        return given, f"--reference-dir {given}"
    tag = version("diffusers")
    folder = cache_dir() / "bench" / f"diffusers-v{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in REFERENCE_SCRIPTS.values():
        if (folder / name).is_file():
            continue
        url = REFERENCE_URL.format(version=tag, name=name)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                text = response.read()
        except OSError as err:
            sys.exit(f"error: cannot download {url} ({err}); offline, pass --reference-dir with "
                     f"{' and '.join(REFERENCE_SCRIPTS.values())} from diffusers v{tag}'s examples/dreambooth/")
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(text)
        tmp.replace(folder / name)  # whole or absent
    source = folder / "SOURCE.txt"  # put there by whoever filled the folder by hand (offline), saying from where
    return folder, source.read_text().strip() if source.is_file() else f"diffusers v{tag} (raw.githubusercontent.com)"


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor())


def machine_info(threads: int) -> dict:
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
        "torch_threads": threads, "platform": platform.platform(), "python": platform.python_version(),
        "versions": {name: version(name) for name in VERSIONS},
        "tensorboard_installed": find_spec("tensorboard") is not None,  # the reference scripts' default logger
        "pythondontwritebytecode": bool(sys.flags.dont_write_bytecode),
    }


def prepare(root: Path, args: argparse.Namespace, methods: list[str]) -> tuple[Path, Path, str]:
    """A DVC working folder as the DAG leaves it before `train` (data/dreambench, data/augmented/none/<subject>,
    data/prior_sets, params.yaml), and a folder of the same images for the reference scripts.

    Returns (working folder, reference image folder, instance caption)."""
    work, subject, resolution = root / "work", args.subject, args.resolution
    params = yaml.safe_load((REPO / "params.smoke.yaml").read_text())
    params["data"].update(subjects=[subject], image_size=resolution)
    params["model"].update(pretrained=args.pretrained, resolution=resolution)
    params["aug"]["strategies"] = [STRATEGY]
    params["multi"]["pairs"] = []  # single-concept training only: no pair of subjects to compose
    params["train"].update(methods=methods, checkpoint_every=dict.fromkeys(METHODS, NEVER),
                           mixed_precision=args.mixed_precision)
    for method in methods:  # the reference scripts' defaults: no prior preservation, frozen text encoder
        params["train"][method].update(steps=args.steps, batch_size=1, prior_preservation=False)
    work.mkdir(parents=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    # `dvc repro` runs stages in a DVC repository, where dvclive also signals each step to DVC's tooling
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=work, check=True)
    fetch_dreambench("embedded", work / DATASET, image_size=resolution)
    subprocess.run([sys.executable, REPO / "stages" / "augment.py", "--subject", subject, "--strategy", STRATEGY],
                   cwd=work, check=True, capture_output=True)
    for method in methods:
        write_prior_set(work / LAYOUT.prior_set(method, subject), None)  # no prior preservation
    instances = root / "instances"  # the reference scripts read every file of the folder as an image
    instances.mkdir()
    examples = read_training_set(work / LAYOUT.augmented(STRATEGY, subject))
    for example in examples:
        shutil.copy(example.image, instances)
    return work, instances, examples[0].caption


@dataclass(frozen=True)
class Bench:
    """What every run shares: the prepared folders, the model, the reference scripts and the settings."""

    root: Path
    work: Path
    instances: Path
    caption: str
    model: str
    scripts: Path
    env: dict
    sides: dict[str, Path]  # our side's label -> repository copy it runs
    args: argparse.Namespace

    def command(self, side: str, method: str) -> tuple[list, Path, Path, dict]:
        """(command, working folder, folder its weights go to, environment) of one side's run."""
        a = self.args
        if side == "reference":
            out = self.root / "ref_out"
            lr = yaml.safe_load((self.work / "params.yaml").read_text())["train"][method]["lr"]
            return [self.scripts / REFERENCE_SCRIPTS[method], f"--pretrained_model_name_or_path={self.model}",
                    f"--instance_data_dir={self.instances}", f"--instance_prompt={self.caption}",
                    f"--resolution={a.resolution}", "--train_batch_size=1", f"--max_train_steps={a.steps}",
                    f"--checkpointing_steps={NEVER}", f"--learning_rate={lr}", "--seed=0",
                    f"--mixed_precision={ACCELERATE_PRECISION[a.mixed_precision]}",
                    f"--output_dir={out}"], self.root, out, self.env
        cell = (method, STRATEGY, a.subject)
        for folder in (LAYOUT.train_log(*cell), LAYOUT.checkpoint(*cell)):  # each run starts from the DAG's inputs
            shutil.rmtree(self.work / folder, ignore_errors=True)
        repo = self.sides[side]
        return ([repo / "stages" / "train.py", "--subject", a.subject, "--method", method, "--strategy", STRATEGY],
                self.work, self.work / LAYOUT.model(*cell), dict(self.env, PYTHONPATH=str(repo / "src")))

    def run(self, side: str, method: str, repeat: int) -> dict:
        """One side's whole run (plain) and step-timed run: steady step times and whole-run times."""
        log = self.root / f"{method}-{side}-{repeat}.log"
        whole = timed_run(*self.command(side, method), log)
        stepped = steady(timed_run(*self.command(side, method), log, self.root / "steps.json"), self.args.warmup)
        if stepped["steps"] != self.args.steps or stepped["torch_threads"] != self.args.threads:
            sys.exit(f"error: {side} {method}: {stepped['steps']} steps on {stepped['torch_threads']} threads, "
                     f"expected {self.args.steps} on {self.args.threads}; see {log}")
        return stepped | {key: whole[key] for key in ("to_weights_s", "to_exit_s", "cpu_s", "peak_rss_mib")}


def timed_run(command: list, cwd: Path, out: Path, env: dict, log: Path, steps_file: Path | None = None) -> dict:
    """Run `command` (under bench/steptimer.py when `steps_file`); its times in seconds from its start."""
    shutil.rmtree(out, ignore_errors=True)
    prefix = [sys.executable] + ([BENCH / "steptimer.py", steps_file] if steps_file else [])
    start = time.time()
    with log.open("w") as handle:
        process = subprocess.Popen([str(part) for part in prefix + command], cwd=cwd, env=env, stdout=handle,
                                   stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # reaps it, with its own CPU time and peak memory
    end = time.time()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"error: {command[0]} failed (exit {process.returncode}); see {log}")
    weights = [path.stat().st_mtime for path in out.rglob("*.safetensors")]
    if not weights:
        sys.exit(f"error: {command[0]} wrote no *.safetensors under {out}; see {log}")
    run = {"to_weights_s": max(weights) - start, "to_exit_s": end - start,
           "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024}  # Linux: KiB
    if steps_file:
        run |= json.loads(steps_file.read_text()) | {"start": start}
    return run


def steady(run: dict, warmup: int) -> dict:
    """Median interval between optimizer steps after `warmup` steps, and time to the first (wall and CPU)."""
    wall, cpu = run["wall"], run["cpu"]
    return {"step_s": statistics.median(b - a for a, b in zip(wall[warmup:], wall[warmup + 1:])),
            "step_cpu_s": statistics.median(b - a for a, b in zip(cpu[warmup:], cpu[warmup + 1:])),
            "to_first_step_s": wall[0] - run["start"], "to_first_step_cpu_s": cpu[0],
            "steps": len(wall), "torch_threads": run["torch_threads"]}


def bare_run(model: str, method: str, args: argparse.Namespace, env: dict) -> dict:
    """Median bare step (bench/bare_step.py) with torch's default AdamW and, as `fused_*`, fused AdamW, over
    as many steps after as many warm-up steps as the runs."""
    done = subprocess.run([sys.executable, BENCH / "bare_step.py", model, method, f"--resolution={args.resolution}",
                           f"--steps={args.steps - args.warmup}", f"--warmup={args.warmup}",
                           f"--mixed-precision={args.mixed_precision}"],
                          env=env, check=True, capture_output=True, text=True)
    times = json.loads(done.stdout)
    return {f"{prefix}{key}": statistics.median(times[optimizer][clock])
            for prefix, optimizer in (("", "adamw"), ("fused_", "adamw_fused"))
            for key, clock in (("step_s", "wall"), ("step_cpu_s", "cpu"))}


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def summarize(runs: dict[str, list[dict]], bare: list[dict], sides: list[str]) -> dict:
    """Medians over repeats per side; ratios of each of our sides to the reference and to the bare step."""
    out = {f"bare_{key}": median_of(bare, key) for key in bare[0]}
    for side in sides:
        r = runs[side]
        out[side] = {key: median_of(r, key) for key in
                     ("step_s", "step_cpu_s", "to_first_step_s", "to_first_step_cpu_s", "to_weights_s", "to_exit_s",
                      "cpu_s", "peak_rss_mib")}
        out[side]["steps_per_s"] = 1 / out[side]["step_s"]
    for side in sides:
        if side == "reference":
            continue
        s = out[side]
        s["steady_speedup"] = out["reference"]["step_s"] / s["step_s"]
        s["steady_speedup_cpu"] = out["reference"]["step_cpu_s"] / s["step_cpu_s"]
        s["step_over_bare"] = s["step_s"] / out["bare_step_s"] - 1
        s["step_over_bare_cpu"] = s["step_cpu_s"] / out["bare_step_cpu_s"] - 1
        s["step_over_fused_bare"] = s["step_s"] / out["bare_fused_step_s"] - 1
        s["whole_run_speedup"] = out["reference"]["to_weights_s"] / s["to_weights_s"]
        s["whole_run_speedup_cpu"] = out["reference"]["cpu_s"] / s["cpu_s"]
        s["targets_met"] = {"steady_speedup": s["steady_speedup"] >= TARGET_SPEEDUP,
                            "step_within_10pct_of_bare": s["step_over_bare"] <= TARGET_BARE_OVERHEAD,
                            "whole_run_speedup": s["whole_run_speedup"] >= TARGET_SPEEDUP}
    return out


def print_table(summary: dict, steps: int) -> None:
    """Wall-clock figures, each with its CPU-time counterpart in brackets (the load-robust one)."""
    print(f"\n{'method':10} {'side':10} {'steps/s':>7} {'step ms (cpu)':>14} {'vs bare':>7} {'1st step s (cpu)':>16} "
          f"{f'{steps} steps s (cpu)':>18} {'MiB':>5} {'steady x (cpu)':>15} {'whole x (cpu)':>14}")
    for method, s in summary.items():
        for label, key in (("bare", "bare_step_s"), ("bare fused", "bare_fused_step_s")):
            cpu = s[key.replace("step_s", "step_cpu_s")]
            print(f"{method:10} {label:10} {1 / s[key]:7.1f} {1000 * s[key]:6.2f} ({1000 * cpu:5.2f})")
        for side, r in s.items():
            if not isinstance(r, dict):
                continue
            line = (f"{method:10} {side:10} {r['steps_per_s']:7.1f} {1000 * r['step_s']:6.2f} "
                    f"({1000 * r['step_cpu_s']:5.2f}) ")
            line += f"{100 * r['step_over_bare']:+6.1f}%" if side != "reference" else " " * 7
            line += (f" {r['to_first_step_s']:7.2f} ({r['to_first_step_cpu_s']:5.2f}) {r['to_weights_s']:9.2f} "
                     f"({r['cpu_s']:5.2f}) {r['peak_rss_mib']:5.0f}")
            if side != "reference":
                line += (f" {r['steady_speedup']:6.2f}x ({r['steady_speedup_cpu']:4.2f}x)"
                         f" {r['whole_run_speedup']:5.2f}x ({r['whole_run_speedup_cpu']:4.2f}x)")
            print(line)
    print(f"(x = reference time / ours; targets: steady and whole run >= {TARGET_SPEEDUP}x, step within "
          f"{100 * TARGET_BARE_OVERHEAD:.0f}% of the bare step with torch's default AdamW, as diffusers' scripts; "
          "MiB = peak resident memory of the whole run)")


def parse_variant(text: str) -> tuple[str, Path]:
    label, sep, folder = text.partition("=")
    if not sep or not (Path(folder) / "stages" / "train.py").is_file():
        raise argparse.ArgumentTypeError(f"--variant {text!r}: want LABEL=DIR, DIR a copy of this repository")
    return label, Path(folder).resolve()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-dir", type=Path, help="folder with diffusers' train_dreambooth_lora.py and "
                        "train_dreambooth.py (default: download the installed diffusers' tag into the cache)")
    parser.add_argument("--methods", nargs="+", default=list(REFERENCE_SCRIPTS), choices=list(REFERENCE_SCRIPTS))
    parser.add_argument("--steps", type=int, default=200, help="steps of each run (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of the steady state (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, medians reported (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every run (default 1; our "
                        "stage runs the tiny model on one thread whatever this says, and the bench stops then)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--pretrained", default="tiny", help="model.pretrained of every side: tiny (default), "
                        "sd15-random (SD 1.5's size, random weights) or a diffusers folder")
    parser.add_argument("--mixed-precision", default="fp32", choices=list(ACCELERATE_PRECISION),
                        help="train.mixed_precision of every side (fp16 needs CUDA)")
    parser.add_argument("--subject", default="dog")
    parser.add_argument("--variant", type=parse_variant, action="append", default=[],
                        help="LABEL=DIR: also bench the train stage of DIR, a changed copy of this repository")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "train_speed.json")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup + 1:
        parser.error(f"--steps {args.steps} must exceed --warmup {args.warmup} + 1")

    missing = [m for m in args.methods if m not in METHODS]  # another engineer may not have added it yet
    methods = [m for m in args.methods if m in METHODS]
    if not methods:
        sys.exit(f"error: none of {args.methods} is a registered method ({sorted(METHODS)})")
    scripts, reference_source = reference_dir(args.reference_dir)
    model = resolve_pretrained(args.pretrained)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    sides = {"ours": REPO, **dict(args.variant)}
    order = [*sides, "reference"]
    root = Path(tempfile.mkdtemp(prefix="dreamstudy-bench-"))
    try:
        work, instances, caption = prepare(root, args, methods)
        bench = Bench(root, work, instances, caption, model, scripts, env, sides, args)
        runs = {m: {side: [] for side in order} for m in methods}
        bare = {m: [] for m in methods}
        load = [os.getloadavg()[0]]
        for repeat in range(args.repeats):
            for method in methods:
                for side in order if repeat % 2 == 0 else order[::-1]:  # neither side always goes first
                    run = bench.run(side, method, repeat)
                    runs[method][side].append(run)
                    print(f"[{repeat + 1}/{args.repeats}] {method} {side}: {1 / run['step_s']:.1f} steps/s, "
                          f"{run['to_weights_s']:.2f} s to weights", flush=True)
                bare[method].append(bare_run(model, method, args, env))
            load.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(root, ignore_errors=True)

    summary = {m: summarize(runs[m], bare[m], order) for m in methods}
    print_table(summary, args.steps)
    if missing:
        print(f"not benched (not registered): {', '.join(missing)}")
    report = {"settings": {k: v for k, v in vars(args).items() if k not in ("out", "reference_dir", "variant")}
              | {"variants": {label: str(path) for label, path in args.variant},
                 "reference": reference_source, "reference_scripts": str(scripts),
                 "reference_sha256": {name: hashlib.sha256((scripts / name).read_bytes()).hexdigest()
                                      for name in REFERENCE_SCRIPTS.values()}},
              "machine": machine_info(args.threads) | {"loadavg_1min": load},
              "missing_methods": missing, "summary": summary, "runs": runs, "bare": bare}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
