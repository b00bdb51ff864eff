"""Class images for DreamBooth's prior preservation: "a photo of a {class}" from the pretrained model.

Each class gets a folder (layout.class_folder) laid out like a training set (PNGs and captions.jsonl),
so the trainer reads it with augment.read_training_set. One seed per image, from (seed, class, index)
only: a class's images do not depend on which other classes or subjects are in the study.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffusers import StableDiffusionPipeline

from dreamstudy.trainset import CAPTIONS
from dreamstudy.data.dreambench import SUBJECTS
from dreamstudy.io import atomic_dir, write_jsonl
from dreamstudy.layout import class_folder
from dreamstudy.models.loading import load_pipeline
from dreamstudy.sampling.sample import render, use_scheduler
from dreamstudy.seeding import derive_seed


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


def generate_class_priors(pipe: StableDiffusionPipeline | None, classes: list[str], out_root: str | Path, *,
                          num_images: int, seed: int, resolution: int, num_inference_steps: int,
                          guidance_scale: float, batch_size: int) -> None:
    """Write `num_images` images of each class (each once, however often listed) under `out_root`.

    `pipe` draws them; it may be None when `num_images` is 0 (then `out_root` is an empty folder).
    """
    # each class once (two dog subjects share one folder); no folders at all when no images are asked for
    unique = list(dict.fromkeys(classes)) if num_images else []
    with atomic_dir(out_root) as tmp:
        for class_name in unique:
            folder = class_folder(tmp, class_name)
            folder.mkdir()
            specs = class_images(class_name, num_images, seed)
            render(pipe, specs, folder, resolution=resolution, num_inference_steps=num_inference_steps,
                   guidance_scale=guidance_scale, batch_size=batch_size)
            write_jsonl(folder / CAPTIONS, [{"file": s.file, "caption": s.prompt, "source": None, "augmented": False,
                                             "mask": None, "subject_mask": None} for s in specs])


def class_priors_from_params(p, out_root: str | Path) -> None:
    """The `class_priors` stage: the classes of data.subjects and ablation.subjects, drawn by params' model
    and sampler.

    With priors.num_images 0 no model loads and `out_root` is an empty folder.
    """
    pipe = None
    if p.priors.num_images:
        pipe = load_pipeline(p.model.pretrained)  # as train_dreambooth.py: float16 on a GPU, float32 on the CPU
        use_scheduler(pipe, p.sample.scheduler)
    subjects = [*p.data.subjects, *p.ablation.subjects]
    generate_class_priors(pipe, [SUBJECTS[s] for s in subjects], out_root, num_images=p.priors.num_images,
                          seed=p.seed, resolution=p.model.resolution,
                          num_inference_steps=p.priors.num_inference_steps,
                          guidance_scale=p.priors.guidance_scale, batch_size=p.priors.batch_size)
