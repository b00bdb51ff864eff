"""What is drawn, with which seed, under which file name: the DreamBench prompts of a subject and the class
images of prior preservation. Apart from the drawing (sample.py, priors.py), so that the stages that only
read the images (evaluate) do not import diffusers or depend on the code that draws them."""

from __future__ import annotations

from dataclasses import dataclass

from dreamstudy.seeding import derive_seed

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


def class_caption(class_name: str) -> str:
    return f"a photo of a {class_name}"


@dataclass(frozen=True)
class ClassImage:
    """One class image to generate (what sample.render needs)."""

    prompt: str
    seed: int
    file: str


def class_images(class_name: str, num_images: int, seed: int) -> list[ClassImage]:
    return [ClassImage(class_caption(class_name), derive_seed(seed, "prior", class_name, k), f"{k:04d}.png")
            for k in range(num_images)]
