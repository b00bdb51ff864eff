"""Class images for DreamBooth's prior preservation: "a photo of a {class}" from the pretrained model.

Each subject gets a folder (Layout.class_priors) of its class's images laid out like a training set (PNGs
and captions.jsonl), so the trainer reads it with trainset.read_training_set. One seed per image, from (seed,
class, index) only: a class's images do not depend on which other subjects are in the study, and subjects of
one class get identical files, which DVC's cache stores once.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import StableDiffusionPipeline

from dreamstudy.data.dreambench import SUBJECTS
from dreamstudy.io import atomic_dir, write_jsonl
from dreamstudy.models.loading import load_pipeline
from dreamstudy.sampling.protocol import class_images
from dreamstudy.sampling.sample import render, speed_up, use_scheduler
from dreamstudy.trainset import CAPTIONS


def generate_class_priors(pipe: StableDiffusionPipeline, class_name: str, out_dir: str | Path, *, num_images: int,
                          seed: int, resolution: int, num_inference_steps: int, guidance_scale: float,
                          batch_size: int) -> None:
    """Write `num_images` images of `class_name` with captions.jsonl into `out_dir`."""
    with atomic_dir(out_dir) as tmp:
        specs = class_images(class_name, num_images, seed)
        render(pipe, specs, tmp, resolution=resolution, num_inference_steps=num_inference_steps,
               guidance_scale=guidance_scale, batch_size=batch_size)
        write_jsonl(tmp / CAPTIONS, [{"file": s.file, "caption": s.prompt, "source": None, "augmented": False,
                                      "mask": None, "subject_mask": None} for s in specs])


def class_priors_from_params(p, subject: str, out_dir: str | Path) -> None:
    """The `class_priors` stage: images of `subject`'s class, drawn by params' model and sampler (with
    sample.scheduler; priors' own steps, guidance and batch). Without sample.compile and sample.channels_last:
    they change class images in the last bits, and so would rerun every training with prior preservation.

    With priors.num_images 0 no model loads and `out_dir` is an empty folder.
    """
    if not p.priors.num_images:
        with atomic_dir(out_dir):
            return
    pipe = load_pipeline(p.model.pretrained)  # as train_dreambooth.py: float16 on a GPU, float32 on the CPU
    use_scheduler(pipe, p.sample.scheduler)
    speed_up(pipe, compile=False, channels_last=False)
    generate_class_priors(pipe, SUBJECTS[subject], out_dir, num_images=p.priors.num_images, seed=p.seed,
                          resolution=p.model.resolution, num_inference_steps=p.priors.num_inference_steps,
                          guidance_scale=p.priors.guidance_scale, batch_size=p.priors.batch_size)
