"""Every stage of the DAG at Stable Diffusion 1.5's real size, on this machine: wall time and peak memory.

    python bench/stages_at_size.py [--resolution 512] [--mixed-precision fp32] [--gradient-checkpointing]
                                   [--steps 2] [--out results/bench/stages_at_size.json]

`model.pretrained: sd15-random` (SD 1.5's exact architecture, random weights) in a clean copy of the working
tree, at the paper's 512 px, with the smoke scale's grid cut to one subject and every count to its least
(training and sampling steps to --steps, one prompt, one image per prompt, one class image, one ablation
strategy and strength), so that every stage kind runs once or twice for a few steps. Each stage runs on its
own (`dvc repro --single-item`, in the DAG's order); its wall time and the peak resident memory of its process
tree (wait4's ru_maxrss, which covers the stage's Python process under DVC) go to stdout and the JSON. A
benchmark, not a test: on 2 CPU cores it takes about an hour.
"""

from __future__ import annotations

import argparse
import graphlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from train_speed import machine_info  # noqa: E402  (a sibling script, not a package)


def clone(dest: Path) -> None:
    """The working tree as it is (tracked and untracked, not ignored), in a fresh git repository."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "bench"]):
        subprocess.run(command, cwd=dest, check=True, capture_output=True)


def bench_params(args: argparse.Namespace) -> dict:
    """params.smoke.yaml at SD 1.5's size, every count at its least."""
    p = yaml.safe_load((REPO / "params.smoke.yaml").read_text())
    p["data"].update(subjects=[args.subject], image_size=args.resolution, prompts_per_subject=1)
    p["model"].update(pretrained="sd15-random", resolution=args.resolution)
    p["aug"].update(strategies=["none"], num_per_image=1)
    p["train"].update(mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing)
    for method in p["train"]["methods"]:
        p["train"][method].update(steps=args.steps, batch_size=1)
    p["priors"].update(num_images=1, num_inference_steps=args.steps, batch_size=1)
    p["sample"].update(images_per_prompt=1, num_inference_steps=args.steps, batch_size=1, pres_images=1)
    p["ablation"].update(subjects=[args.subject], strategies=["classic"], strengths=[1.0])
    p["multi"]["pairs"] = []  # one subject: the multi-concept stages are not measured at this size yet
    return p


def stage_order(repo: Path, env: dict) -> list[str]:
    """The DAG's stages in an order that runs each after what it depends on (`dvc dag --dot`'s edges; a dry
    `dvc repro` cannot list them before the first stage has written the inputs files)."""
    dot = subprocess.run(["dvc", "dag", "--dot"], cwd=repo, env=env, check=True, capture_output=True, text=True)
    graph = {name: set() for name in re.findall(r'^"([^"]+)";$', dot.stdout, re.MULTILINE)}
    for before, after in re.findall(r'^"([^"]+)" -> "([^"]+)";$', dot.stdout, re.MULTILINE):
        graph[after].add(before)
    return list(graphlib.TopologicalSorter(graph).static_order())


def run_stage(repo: Path, stage: str, env: dict, log: Path) -> dict:
    start = time.time()
    with log.open("a") as handle:
        process = subprocess.Popen(["dvc", "repro", "--single-item", stage], cwd=repo, env=env,
                                   stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"error: stage {stage} failed; see {log}")
    return {"stage": stage, "wall_s": round(time.time() - start, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--mixed-precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--steps", type=int, default=2, help="training and sampling steps of every stage")
    parser.add_argument("--subject", default="dog")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "stages_at_size.json")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="dreamstudy-stages-"))
    repo, log = root / "repo", root / "dvc.log"
    env = dict(os.environ, PYTHONPATH=str(root / "repo" / "src"), HF_HUB_OFFLINE="1")
    rows = []
    try:
        repo.mkdir()
        clone(repo)
        (repo / "params.yaml").write_text(yaml.safe_dump(bench_params(args), sort_keys=False))
        for stage in stage_order(repo, env):
            rows.append(run_stage(repo, stage, env, log))
            print(f"{stage:50} {rows[-1]['wall_s']:8.1f} s {rows[-1]['peak_rss_mib']:7d} MiB", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {"settings": {k: v for k, v in vars(args).items() if k != "out"} | {"model": "sd15-random"},
              "machine": machine_info(os.cpu_count()), "stages": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
