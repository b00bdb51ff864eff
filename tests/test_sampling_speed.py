"""Sampling throughput on the built-in tiny model (CPU): a batch of mixed prompts with classifier-free guidance is
one UNet call per denoising step; attention is SDPA; sample.channels_last and sample.compile (`speed_up`) change
the images in the last bits only; the sample stage declares both settings, and class_priors neither."""

import numpy as np
import pytest
import torch
import yaml
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, SlicedAttnProcessor

from dreamstudy import dag
from dreamstudy.methods.custom_diffusion import kv_processors
from dreamstudy.models.loading import load_pipeline
from dreamstudy.params import ParamsError, validate_params
from dreamstudy.sampling import priors
from dreamstudy.sampling.protocol import SampleSpec
from dreamstudy.sampling.sample import SDPA_PROCESSORS, render, speed_up, use_scheduler, use_sdpa
from tests.helpers import ROOT

RESOLUTION = 32
STEPS = 3
PROMPTS = ["a sks dog in the jungle", "a red cube", "a sks dog on the beach"]
TOLERANCE = 1e-3  # of images in [0, 1]: other kernels round differently, nothing more


@pytest.fixture
def pipe():
    pipe = load_pipeline("tiny")
    use_scheduler(pipe, "ddim")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def draw(pipe, prompts=PROMPTS, guidance_scale=7.5) -> np.ndarray:
    generators = [torch.Generator().manual_seed(100 + k) for k in range(len(prompts))]
    return pipe(prompt=prompts, height=RESOLUTION, width=RESOLUTION, num_inference_steps=STEPS,
                guidance_scale=guidance_scale, generator=generators, output_type="np").images


def unet_calls(pipe) -> list[tuple[int, torch.Tensor]]:
    """Records each UNet call as (rows of its latent batch, its encoder_hidden_states)."""
    calls = []
    pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((args[0].shape[0], kwargs["encoder_hidden_states"].clone())),
        with_kwargs=True)
    return calls


# ---- batching ---------------------------------------------------------------------------------------------

def test_a_batch_of_mixed_prompts_with_guidance_is_one_unet_call_per_step(pipe, tmp_path):
    calls = unet_calls(pipe)
    specs = [SampleSpec("dog", k, "recontextualization", prompt, 0, 100 + k, f"{k:02d}_0.png")
             for k, prompt in enumerate(PROMPTS)]
    render(pipe, specs, tmp_path, resolution=RESOLUTION, num_inference_steps=STEPS, guidance_scale=7.5,
           batch_size=len(specs))
    assert all((tmp_path / spec.file).is_file() for spec in specs)
    # one call per step, on the unconditional and the conditional halves of all three prompts together
    assert [rows for rows, _ in calls] == [2 * len(PROMPTS)] * STEPS
    embeddings = calls[0][1]
    uncond, cond = embeddings[:len(PROMPTS)], embeddings[len(PROMPTS):]
    assert all(torch.equal(row, uncond[0]) for row in uncond)  # the empty prompt, once per image
    assert not torch.equal(cond[0], cond[1]) and not torch.equal(cond[0], cond[2])  # three prompts, one call


def test_batches_are_cut_at_batch_size_and_no_guidance_is_no_unconditional_half(pipe, tmp_path):
    calls = unet_calls(pipe)
    specs = [SampleSpec("dog", k, "recontextualization", PROMPTS[k % 3], 0, k, f"{k:02d}.png") for k in range(5)]
    render(pipe, specs, tmp_path, resolution=RESOLUTION, num_inference_steps=STEPS, guidance_scale=7.5, batch_size=2)
    assert [rows for rows, _ in calls] == [4] * STEPS + [4] * STEPS + [2] * STEPS
    calls.clear()
    draw(pipe, guidance_scale=1.0)  # diffusers guides only above 1
    assert [rows for rows, _ in calls] == [len(PROMPTS)] * STEPS


# ---- SDPA -------------------------------------------------------------------------------------------------

def test_attention_is_sdpa(pipe, monkeypatch):
    pipe.unet.set_attn_processor(AttnProcessor())  # diffusers' fallback without SDPA
    pipe.vae.set_attn_processor(AttnProcessor())
    speed_up(pipe, compile=False, channels_last=False)
    for model in (pipe.unet, pipe.vae):
        processors = model.attn_processors.values()
        assert processors and all(type(p) is AttnProcessor2_0 for p in processors), type(model).__name__
    sdpa = torch.nn.functional.scaled_dot_product_attention
    calls = []
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *args, **kwargs: calls.append(1) or sdpa(*args, **kwargs))
    draw(pipe)
    attention_layers = len(pipe.unet.attn_processors)
    assert len(calls) >= attention_layers * STEPS


def test_custom_diffusion_sdpa_processors_are_kept_and_others_refused(pipe):
    pipe.unet.set_attn_processor(kv_processors(pipe.unet))  # Custom Diffusion's, as it trains
    kinds = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    use_sdpa(pipe.unet)
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == kinds
    assert "CustomDiffusionAttnProcessor2_0" in kinds
    pipe.unet.set_attn_processor(SlicedAttnProcessor(slice_size=1))  # no SDPA
    with pytest.raises(ValueError, match="without SDPA.*SlicedAttnProcessor"):
        use_sdpa(pipe.unet)


# ---- channels_last, compile -------------------------------------------------------------------------------

def test_channels_last_sets_the_memory_format_and_keeps_the_images(pipe):
    plain = draw(pipe)
    speed_up(pipe, compile=False, channels_last=True)
    for model in (pipe.unet, pipe.vae):
        convolutions = [p for p in model.parameters() if p.dim() == 4]
        assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
        assert not all(p.is_contiguous() for p in convolutions)  # not merely 1x1 kernels
    fast = draw(pipe)
    assert np.abs(fast - plain).max() < TOLERANCE


def test_compile_keeps_the_unet_and_the_images(pipe):
    """torch.compile (inductor) on the CPU: about a minute for the tiny UNet the first time, seconds once
    inductor's cache holds it."""
    plain = draw(pipe)
    speed_up(pipe, compile=True, channels_last=False)
    assert isinstance(pipe.unet, UNet2DConditionModel) and pipe.unet._compiled_call_impl is not None
    compiled = draw(pipe)
    assert np.abs(compiled - plain).max() < TOLERANCE
    assert np.abs(draw(pipe) - compiled).max() == 0  # the compiled graph again: the same images


# ---- the stages' declared reads ---------------------------------------------------------------------------

def smoke(**sample) -> dict:
    raw = yaml.safe_load((ROOT / "params.smoke.yaml").read_text())
    raw["sample"].update(sample)
    return raw


def test_both_settings_are_off_by_default_and_declared_by_the_sample_stage_only():
    for name in ("params.yaml", "params.smoke.yaml"):
        sample = yaml.safe_load((ROOT / name).read_text())["sample"]
        assert sample["compile"] is False and sample["channels_last"] is False, name
    p = validate_params(smoke(compile=True, channels_last=True))
    for study in ("main", "ablation"):
        view = dag.view(p, study, "sample", "lora")
        assert view.sample.compile is True and view.sample.channels_last is True
    # a speed switch must not redraw the class images: every training with prior preservation would rerun
    view = dag.view(p, "main", "class_priors", None)
    with pytest.raises(ParamsError, match="sample.compile"):
        view.sample.compile  # noqa: B018


def test_class_priors_are_drawn_with_sdpa_and_without_the_speed_settings(tmp_path, monkeypatch):
    applied = []

    def spy(pipe, *, compile, channels_last):
        applied.append((compile, channels_last))
        speed_up(pipe, compile=compile, channels_last=channels_last)
        applied.append(all(isinstance(p, SDPA_PROCESSORS) for p in pipe.unet.attn_processors.values()))

    monkeypatch.setattr(priors, "speed_up", spy)
    p = validate_params(smoke(compile=True, channels_last=True))
    priors.class_priors_from_params(dag.view(p, "main", "class_priors", None), "dog", tmp_path / "dog")
    assert applied == [(False, False), True]
    assert len(list((tmp_path / "dog").glob("*.png"))) == p.priors.num_images
