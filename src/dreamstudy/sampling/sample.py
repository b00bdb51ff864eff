"""The DreamBench sampling protocol: every prompt of a subject x `images_per_prompt`, one fixed seed per
image. Seeds depend on (seed, subject, prompt, image) only, so every method and strategy is sampled
from the same initial noise and their images can be compared pair by pair."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       PNDMScheduler, StableDiffusionPipeline)
from tqdm.auto import tqdm

from dreamstudy.io import atomic_dir, write_jsonl
from dreamstudy.seeding import derive_seed

SCHEDULERS = {"ddim": DDIMScheduler, "pndm": PNDMScheduler, "dpm": DPMSolverMultistepScheduler,
              "euler": EulerDiscreteScheduler}
SAMPLES = "samples.jsonl"
PRES = "pres"


@dataclass(frozen=True)
class SampleSpec:
    """One image to generate, and the row that describes it in samples.jsonl."""

    subject: str
    prompt_index: int
    prompt_kind: str
    prompt: str
    image_index: int
    seed: int
    file: str


def dreambench_specs(subject, *, identifier: str, num_prompts: int, images_per_prompt: int,
                     seed: int) -> list[SampleSpec]:
    """The first `num_prompts` DreamBench prompts of `subject` (data.dreambench.Subject), each N times."""
    return [
        SampleSpec(subject=subject.name, prompt_index=p.index, prompt_kind=p.kind,
                   prompt=p.text(identifier, subject.class_name), image_index=k,
                   seed=derive_seed(seed, "sample", subject.name, p.index, k),
                   file=f"p{p.index:02d}_{k}.png")
        for p in subject.prompts[:num_prompts] for k in range(images_per_prompt)
    ]


def use_scheduler(pipe: StableDiffusionPipeline, name: str) -> None:
    pipe.scheduler = SCHEDULERS[name].from_config(pipe.scheduler.config)


def render(pipe: StableDiffusionPipeline, specs, folder: Path, *, resolution: int, num_inference_steps: int,
           guidance_scale: float, batch_size: int) -> None:
    """Render each spec (anything with .prompt, .seed and .file, e.g. SampleSpec) as `folder / spec.file`."""
    pipe.set_progress_bar_config(disable=True)
    with tqdm(total=len(specs), desc="sample", unit="img") as bar:
        for start in range(0, len(specs), batch_size):
            chunk = specs[start:start + batch_size]
            # one generator per image: an image depends on its own seed, not on the batch it falls in
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
