"""Drawing by the DreamBench sampling protocol (protocol.py): every prompt of a subject x `images_per_prompt`,
one fixed seed per image. Seeds depend on (seed, subject, prompt, image) only, so every method and strategy
is sampled from the same initial noise and their images can be compared pair by pair.

Throughput: each pipeline call draws `batch_size` images of mixed prompts, and diffusers' pipeline runs
classifier-free guidance as one UNet call on the unconditional and conditional halves together (2 x batch
rows per denoising step). Attention is PyTorch's scaled_dot_product_attention (SDPA), checked by `speed_up`,
which also applies sample.channels_last and sample.compile.

A pipeline with a NaN or infinite weight draws black images without any error: `generate` refuses one
(NonFiniteWeightsError) before drawing anything."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, CustomDiffusionAttnProcessor2_0
from diffusers.schedulers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler
from tqdm.auto import tqdm

from dreamstudy.errors import StudyError
from dreamstudy.io import atomic_dir, write_jsonl
from dreamstudy.models.loading import loaded_from
from dreamstudy.sampling.protocol import PRES, SAMPLES, SampleSpec

SCHEDULERS = {"ddim": DDIMScheduler, "pndm": PNDMScheduler, "dpm": DPMSolverMultistepScheduler,
              "euler": EulerDiscreteScheduler}
# Attention processors that call torch.nn.functional.scaled_dot_product_attention
SDPA_PROCESSORS = (AttnProcessor2_0, CustomDiffusionAttnProcessor2_0)


class NonFiniteWeightsError(StudyError, ValueError):
    """A model to sample from holds NaN or infinite weights."""


def check_finite(pipe: StableDiffusionPipeline, where: str | Path | None = None) -> None:
    """NonFiniteWeightsError, naming the part, a tensor, the folder it loaded from and `where` (e.g. the
    fine-tuned model's folder), if the UNet, text encoder or VAE holds a NaN or an infinity.

    One pass over the weights and one device sync per model: little beside drawing a single image."""
    for part in ("unet", "text_encoder", "vae"):
        model = getattr(pipe, part)
        named = list(model.named_parameters())
        finite = torch.stack([torch.isfinite(p).all() for _, p in named]).tolist()
        bad = [name for (name, _), ok in zip(named, finite, strict=True) if not ok]
        if not bad:
            continue
        # the base folder the part loaded from; fine-tuned weights on top (LoRA, a token's embedding): `where`
        source = loaded_from(model)
        model_dir = f"the model in {where}" if where else "the pipeline"
        raise NonFiniteWeightsError(
            f"refusing to sample from {model_dir}: its {part} holds NaN or infinite weights ({len(bad)} of "
            f"{len(named)} tensors, e.g. {bad[0]}; {part} loaded from {source}), and would draw black images. "
            "Likely causes: a corrupted weights file (rebuild or re-download model.pretrained) or a model "
            "trained into NaN (retrain it).")


def use_scheduler(pipe: StableDiffusionPipeline, name: str) -> None:
    pipe.scheduler = SCHEDULERS[name].from_config(pipe.scheduler.config)


def on_sdpa(processor):
    """`processor` with AttnProcessor2_0 in place of a plain AttnProcessor; a wrapper (ED-LoRA's layer-wise
    processor, which keeps the layer's own in `.processor`) with its inner processor so replaced."""
    if hasattr(processor, "processor"):
        processor.processor = on_sdpa(processor.processor)
        return processor
    return AttnProcessor2_0() if type(processor) is AttnProcessor else processor


def innermost(processor):
    return innermost(processor.processor) if hasattr(processor, "processor") else processor


def use_sdpa(model: torch.nn.Module) -> None:
    """Every attention layer of `model` (a UNet or a VAE) on PyTorch's SDPA: diffusers' AttnProcessor2_0 in
    place of its plain AttnProcessor (what it falls back to without SDPA), set explicitly, inside a wrapper
    too; any processor that is neither, nor Custom Diffusion's SDPA one, is an error."""
    processors = {name: on_sdpa(processor) for name, processor in model.attn_processors.items()}
    other = {name: type(innermost(processor)).__name__ for name, processor in processors.items()
             if not isinstance(innermost(processor), SDPA_PROCESSORS)}
    if other:
        name, kind = next(iter(other.items()))
        raise ValueError(f"{type(model).__name__}: {len(other)} attention layer(s) without SDPA, e.g. {name} "
                         f"({kind}); sampling expects {', '.join(c.__name__ for c in SDPA_PROCESSORS)}")
    if processors:
        model.set_attn_processor(processors)


def speed_up(pipe: StableDiffusionPipeline, *, compile: bool, channels_last: bool) -> None:
    """SDPA attention always; sample.channels_last and sample.compile as the diffusers documentation applies
    them ("Accelerate inference"). Call it on the finished pipeline, after any fine-tuned weights load:
    compilation traces the modules as they are.

    channels_last: the UNet's and the VAE's weights in channels-last (NHWC) memory format, which the GPU's
    convolution kernels prefer; activations follow. compile: torch.compile on the UNet, the model the
    pipeline calls at every step, in place (`pipe.unet` stays a UNet2DConditionModel); default mode, which
    records no CUDA graphs and so takes the smaller last batch too, and fullgraph (no graph break in the
    UNet). The first batch pays the compilation; inductor's on-disk cache spares the stages after it most
    of that. Both change the images in the last bits only (other kernels), and are dependencies like
    sample.batch_size."""
    for model in (pipe.unet, pipe.vae):
        use_sdpa(model)
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile:
        pipe.unet.compile(fullgraph=True)


def render(pipe: StableDiffusionPipeline, specs, folder: Path, *, resolution: int, num_inference_steps: int,
           guidance_scale: float, batch_size: int,
           around: Callable[[list[str]], AbstractContextManager] = lambda prompts: nullcontext()) -> None:
    """Render each spec (anything with .prompt, .seed and .file, e.g. SampleSpec) as `folder / spec.file`;
    each pipeline call inside `around(its prompts)` (e.g. regions installed for them)."""
    pipe.set_progress_bar_config(disable=True)
    with tqdm(total=len(specs), desc="sample", unit="img") as bar:
        for start in range(0, len(specs), batch_size):
            chunk = specs[start:start + batch_size]
            # one generator per image: an image's noise is its own seed's, whichever images share its batch.
            # The batch size itself can still change a pixel by a level (batched kernels round differently),
            # so sample.batch_size is a dependency of the sample stage.
            prompts = [s.prompt for s in chunk]
            with around(prompts):
                images = pipe(prompt=prompts, height=resolution, width=resolution,
                              num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                              generator=[torch.Generator().manual_seed(s.seed) for s in chunk]).images
            for spec, image in zip(chunk, images, strict=True):
                image.save(folder / spec.file)
            bar.update(len(chunk))


def generate(pipe: StableDiffusionPipeline, specs: list[SampleSpec], out_dir: str | Path, *, resolution: int,
             num_inference_steps: int, guidance_scale: float, batch_size: int, extra: dict,
             class_specs: list = (),
             around: Callable[[list[str]], AbstractContextManager] = lambda prompts: nullcontext(),
             model_dir: str | Path | None = None) -> None:
    """Render `specs` into `out_dir` with samples.jsonl; `extra` fields (method, ...) join every row.

    `class_specs` (sampling.priors.ClassImage: "a photo of a dog" with the class images' own seeds) go
    to out_dir/pres/ with pres.jsonl: prior preservation (PRES) compares them with the base model's
    class images of the same seeds.

    NonFiniteWeightsError, before anything is drawn or written, if a weight of `pipe` is not finite;
    `model_dir` (the fine-tuned model's folder, if any) is named in it."""
    check_finite(pipe, model_dir)
    with atomic_dir(out_dir) as tmp:
        settings = dict(resolution=resolution, num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, batch_size=batch_size)
        render(pipe, specs, tmp, **settings, around=around)
        write_jsonl(tmp / SAMPLES, [{**asdict(s), **extra} for s in specs])
        if class_specs:
            (tmp / PRES).mkdir()
            render(pipe, class_specs, tmp / PRES, **settings)
            subject = specs[0].subject if specs else None
            write_jsonl(tmp / f"{PRES}.jsonl", [{**asdict(s), "file": f"{PRES}/{s.file}", "subject": subject,
                                                 **extra} for s in class_specs])
