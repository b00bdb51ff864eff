"""Speed of the `evaluate` stages (one per run) and of the `gather` stage, and the time they project for
the paper protocol.

    python bench/eval_speed.py [--subjects 2] [--prompts 2] [--resolution 512] [--batch-size 32]

Builds a synthetic study (noise images at --resolution, 4 real photos and 4 PRES images per subject, the
base model's class images, one method x strategies none and classic) and evaluates each of its runs
(`evaluate_run`) with random-init encoders (the real architectures: the same compute as the pretrained
ones) twice: with an empty embedding cache (cold) and again (warm: every reference embedding read from the
cache, as in every run after the first). Throughput = (samples + PRES images) / seconds, encoders loaded
beforehand (once per stage process in the DAG: see load_encoders). Then times the gather of the score
folders. Also times each model alone per image. Projects the paper protocol from the warm throughput: per
method and strategy, 30 subjects x 25 prompts x 4 images = 3000 samples and 30 x 4 PRES images. Prints a
table and writes everything, with machine info, to results/bench/eval_speed.json.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dreamstudy.data.dreambench import SUBJECTS
from dreamstudy.io import write_jsonl
from dreamstudy.layout import Layout
from dreamstudy.metrics.diversity import pairwise_lpips, to_lpips_input
from dreamstudy.metrics.encoders import load_encoders
from dreamstudy.metrics.run import evaluate_run
from dreamstudy.metrics.scores import write_scores
from dreamstudy.metrics.study import gather, read_study_scores
from dreamstudy.params import EvalParams
from dreamstudy.sampling.protocol import class_images

REPO = Path(__file__).resolve().parents[1]
METHOD, STRATEGIES = "lora", ("none", "classic")
LAYOUT = Layout()  # relative paths, under the synthetic study's root (the working directory while timed)
REAL_PER_SUBJECT, PRES_PER_RUN, IMAGES_PER_PROMPT = 4, 4, 4
PAPER = {"subjects": 30, "prompts": 25, "images_per_prompt": 4, "pres_images": 4, "real_images": 158}
VERSIONS = ("torch", "open_clip_torch", "timm", "lpips", "pandas", "scipy")


def noise(rng: np.random.Generator, size: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def build_study(root: Path, subjects: list[str], prompts: int, resolution: int, seed: int = 0) -> list[tuple]:
    """The files the evaluate stage reads, laid out under `root` as the DAG leaves them; returns the runs."""
    rng = np.random.default_rng(seed)
    dataset = root / "data" / "dreambench"
    manifest = []
    for subject in subjects:
        files = []
        for k in range(REAL_PER_SUBJECT):
            path = dataset / "images" / subject / f"{k:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            noise(rng, resolution).save(path)
            files.append({"file": str(path.relative_to(dataset))})
        manifest.append({"name": subject, "class": SUBJECTS[subject], "files": files})
    (dataset / "manifest.json").write_text(json.dumps({"subjects": manifest}))
    runs = list(itertools.product([METHOD], STRATEGIES, subjects))
    for _, strategy, subject in runs:
        folder = root / LAYOUT.samples(METHOD, strategy, subject)
        (folder / "pres").mkdir(parents=True)
        rows = []
        for p, k in itertools.product(range(prompts), range(IMAGES_PER_PROMPT)):
            noise(rng, resolution).save(folder / f"p{p:02d}_{k}.png")
            rows.append({"subject": subject, "class": SUBJECTS[subject], "method": METHOD, "strategy": strategy,
                         "prompt_index": p, "prompt_kind": "recontextualization",
                         "prompt": f"a sks {SUBJECTS[subject]} number {p}", "identifier": "sks", "image_index": k,
                         "seed": k, "file": f"p{p:02d}_{k}.png"})
        write_jsonl(folder / "samples.jsonl", rows)
        specs = class_images(SUBJECTS[subject], PRES_PER_RUN, seed)
        for spec in specs:
            noise(rng, resolution).save(folder / "pres" / spec.file)
            base = root / LAYOUT.class_priors(subject) / spec.file
            base.parent.mkdir(parents=True, exist_ok=True)
            if not base.exists():
                noise(rng, resolution).save(base)
        write_jsonl(folder / "pres.jsonl", [{"prompt": s.prompt, "seed": s.seed, "file": f"pres/{s.file}"}
                                            for s in specs])
    return runs


def per_image_seconds(encoders, resolution: int, batch_size: int, repeats: int = 3) -> dict:
    """Each model alone on one batch, seconds per image (median of `repeats`)."""
    rng = np.random.default_rng(1)
    images = [noise(rng, resolution) for _ in range(min(batch_size, 8))]
    pixels = to_lpips_input(images[:IMAGES_PER_PROMPT])
    work = {
        "clip": (lambda: encoders.embed_images_clip(images, batch_size), len(images)),
        "dino": (lambda: encoders.embed_images_dino(images, batch_size), len(images)),
        # one prompt's images: every pair's distance (DIV), per image
        "lpips": (lambda: pairwise_lpips(encoders.lpips, pixels), IMAGES_PER_PROMPT),
    }
    timings = {}
    for name, (call, count) in work.items():
        call()  # warm-up
        seconds = []
        for _ in range(repeats):
            _sync(encoders.device)
            start = time.perf_counter()
            call()
            _sync(encoders.device)
            seconds.append((time.perf_counter() - start) / count)
        timings[name] = float(np.median(seconds))
    return timings


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_evaluation(root: Path, runs: list, encoders, batch_size: int, cache: Path) -> tuple[float, int]:
    """Seconds to evaluate every run and write its score folder; the number of samples scored."""
    start, samples = time.perf_counter(), 0
    for run in runs:
        scores = evaluate_run(root / "data" / "dreambench", root / LAYOUT.samples(*run),
                              root / LAYOUT.class_priors(run[2]), run, pretrained=False, batch_size=batch_size,
                              seed=0, cache_root=cache, encoders=encoders)
        write_scores(root / LAYOUT.scores(*run), scores)
        samples += len(scores.per_image)
    return time.perf_counter() - start, samples


def timed_gather(root: Path, runs: list) -> float:
    """Seconds to read the score folders and compute the study's tables, at params.yaml's eval defaults."""
    settings = EvalParams()
    start = time.perf_counter()
    with contextlib.chdir(root):  # layout paths are relative: the stages run in the repository
        gather(read_study_scores(LAYOUT, runs), seed=0, memorization_threshold=settings.memorization_threshold,
               bootstrap_samples=settings.bootstrap_samples, confidence=settings.confidence, alpha=settings.alpha)
    return time.perf_counter() - start


def project(throughput: float, reference_seconds: float, methods: int, strategies: int) -> dict:
    per_run_set = PAPER["subjects"] * (PAPER["prompts"] * PAPER["images_per_prompt"] + PAPER["pres_images"])
    seconds = per_run_set / throughput
    return {"images_per_method_strategy": per_run_set, "seconds_per_method_strategy": seconds,
            "grid": f"{methods} methods x {strategies} strategies (params.yaml)",
            "seconds_grid": methods * strategies * seconds + reference_seconds * PAPER["real_images"],
            "note": "warm cache; the first run also encodes DreamBench's 158 real photos once (included in "
                    "seconds_grid); CPU numbers from this machine, torch threads as listed"}


def machine_info(device: str) -> dict:
    return {"device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
            "cores_usable": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": {name: version(name) for name in VERSIONS}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=2, help="subjects per run (default 2)")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per subject (default 2)")
    parser.add_argument("--resolution", type=int, default=512, help="image size in px (paper: 512)")
    parser.add_argument("--batch-size", type=int, default=32, help="eval.batch_size (paper: 32)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "eval_speed.json")
    args = parser.parse_args(argv)
    subjects = sorted(SUBJECTS)[:args.subjects]
    device = "cuda" if torch.cuda.is_available() else "cpu"

    with tempfile.TemporaryDirectory(prefix="eval_speed.") as tmp:
        root = Path(tmp)
        runs = build_study(root, subjects, args.prompts, args.resolution)
        start = time.perf_counter()
        encoders = load_encoders(pretrained=False, device=device, seed=0)
        load_seconds = time.perf_counter() - start
        cold, images = timed_evaluation(root, runs, encoders, args.batch_size, root / "cache")
        warm, _ = timed_evaluation(root, runs, encoders, args.batch_size, root / "cache")
        gather_seconds = timed_gather(root, runs)
        models = per_image_seconds(encoders, args.resolution, args.batch_size)

    processed = images + len(runs) * PRES_PER_RUN
    references = len(subjects) * REAL_PER_SUBJECT
    reference_seconds = max(cold - warm, 0.0) / references  # encoding a real photo, both encoders
    throughput = processed / warm
    report = {
        "setup": {"runs": len(runs), "subjects": len(subjects), "prompts": args.prompts,
                  "samples": images, "pres_images": len(runs) * PRES_PER_RUN, "real_images": references,
                  "resolution": args.resolution, "batch_size": args.batch_size, "encoders": "random init"},
        "seconds": {"load_encoders": load_seconds, "evaluate_cold_cache": cold, "evaluate_warm_cache": warm,
                    "gather": gather_seconds},
        "images_per_second": {"cold_cache": processed / cold, "warm_cache": throughput},
        "seconds_per_image_by_model": models,
        "seconds_per_reference_image": reference_seconds,
        "paper_projection": project(throughput, reference_seconds, methods=4, strategies=2),
        "machine": machine_info(device),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"evaluate {len(runs)} runs: {images} samples + {len(runs) * PRES_PER_RUN} PRES images, "
          f"{args.resolution} px, {device} ({torch.get_num_threads()} threads)")
    print(f"  load encoders   {load_seconds:7.1f} s")
    print(f"  cold cache      {cold:7.1f} s  {processed / cold:6.2f} img/s")
    print(f"  warm cache      {warm:7.1f} s  {throughput:6.2f} img/s")
    print(f"  gather          {gather_seconds:7.1f} s  ({len(runs)} score folders)")
    print("  per image: " + ", ".join(f"{name} {1000 * s:.0f} ms" for name, s in models.items()))
    projection = report["paper_projection"]
    print(f"paper protocol: {projection['images_per_method_strategy']} images per method and strategy "
          f"-> {projection['seconds_per_method_strategy'] / 60:.1f} min; "
          f"{projection['grid']} -> {projection['seconds_grid'] / 60:.1f} min")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
