"""Drawing by the DreamBench sampling protocol (protocol.py): every prompt of a subject x `images_per_prompt`,
one fixed seed per image. Seeds depend on (seed, subject, prompt, image) only, so every method and strategy
is sampled from the same initial noise and their images can be compared pair by pair."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       PNDMScheduler, StableDiffusionPipeline)
from tqdm.auto import tqdm

from dreamstudy.io import atomic_dir, write_jsonl
from dreamstudy.sampling.protocol import PRES, SAMPLES, SampleSpec

SCHEDULERS = {"ddim": DDIMScheduler, "pndm": PNDMScheduler, "dpm": DPMSolverMultistepScheduler,
              "euler": EulerDiscreteScheduler}


def use_scheduler(pipe: StableDiffusionPipeline, name: str) -> None:
    pipe.scheduler = SCHEDULERS[name].from_config(pipe.scheduler.config)


def render(pipe: StableDiffusionPipeline, specs, folder: Path, *, resolution: int, num_inference_steps: int,
           guidance_scale: float, batch_size: int) -> None:
    """Render each spec (anything with .prompt, .seed and .file, e.g. SampleSpec) as `folder / spec.file`."""
    pipe.set_progress_bar_config(disable=True)
    with tqdm(total=len(specs), desc="sample", unit="img") as bar:
        for start in range(0, len(specs), batch_size):
            chunk = specs[start:start + batch_size]
            # one generator per image: an image's noise is its own seed's, whichever images share its batch.
            # The batch size itself can still change a pixel by a level (batched kernels round differently),
            # so sample.batch_size is a dependency of the sample stage.
            images = pipe(prompt=[s.prompt for s in chunk], height=resolution, width=resolution,
                          num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                          generator=[torch.Generator().manual_seed(s.seed) for s in chunk]).images
            for spec, image in zip(chunk, images, strict=True):
                image.save(folder / spec.file)
            bar.update(len(chunk))


def generate(pipe: StableDiffusionPipeline, specs: list[SampleSpec], out_dir: str | Path, *, resolution: int,
             num_inference_steps: int, guidance_scale: float, batch_size: int, extra: dict,
             class_specs: list = ()) -> None:
    """Render `specs` into `out_dir` with samples.jsonl; `extra` fields (method, ...) join every row.

    `class_specs` (sampling.priors.ClassImage: "a photo of a dog" with the class images' own seeds) go
    to out_dir/pres/ with pres.jsonl: prior preservation (PRES) compares them with the base model's
    class images of the same seeds."""
    with atomic_dir(out_dir) as tmp:
        settings = dict(resolution=resolution, num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, batch_size=batch_size)
        render(pipe, specs, tmp, **settings)
        write_jsonl(tmp / SAMPLES, [{**asdict(s), **extra} for s in specs])
        if class_specs:
            (tmp / PRES).mkdir()
            render(pipe, class_specs, tmp / PRES, **settings)
            subject = specs[0].subject if specs else None
            write_jsonl(tmp / f"{PRES}.jsonl", [{**asdict(s), "file": f"{PRES}/{s.file}", "subject": subject,
                                                 **extra} for s in class_specs])
