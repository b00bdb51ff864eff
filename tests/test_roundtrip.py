"""Every method's artefact, loaded into a stock diffusers pipeline the way a user loads it, computes what
the trained model in memory computes: the same text-encoder and UNet outputs. Each case trains a few steps
on the tiny model, enough to move its outputs away from the base model's."""

import copy
import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from dreamstudy.methods import get_method
from dreamstudy.methods.custom_diffusion import KV
from dreamstudy.methods.dreambooth import DreamBooth
from dreamstudy.methods.lora import WEIGHTS
from dreamstudy.methods.registry import tokenize
from dreamstudy.methods.trainer import Concept, train
from dreamstudy.models.loading import MANIFEST, load_components, load_pipeline, resolve_pretrained
from tests.helpers import noise_examples, smoke_train_params

RESOLUTION = 32
# The methods' sections: a learning rate high enough for 4 steps to show; rank != alpha for LoRA, since
# alpha / rank scales its update and a reload that loses alpha takes alpha = rank.
CASES = {
    "dreambooth": ("dreambooth", {"lr": 1e-3}),
    "dreambooth_text_encoder": ("dreambooth", {"lr": 1e-3, "train_text_encoder": True}),
    "lora": ("lora", {"lr": 1e-2, "rank": 4, "alpha": 16.0}),
    "lora_text_encoder": ("lora", {"lr": 1e-2, "rank": 2, "alpha": 1.0, "train_text_encoder": True}),
    "textual_inversion": ("textual_inversion", {"lr": 5e-2}),
    "custom_diffusion": ("custom_diffusion", {"lr": 5e-2}),
}
LATENTS = torch.randn(1, 4, RESOLUTION // 8, RESOLUTION // 8, generator=torch.Generator().manual_seed(0))
TIMESTEP = 500


def method_of(case):
    """A method and its schedule from the case's params section, 4 steps."""
    name, section = CASES[case]
    return get_method(name, smoke_train_params(
        **{name: {"steps": 4, "batch_size": 2, "prior_preservation": False, **section}}))


@pytest.fixture(scope="module")
def artefact(tmp_path_factory):
    """`artefact(case)`: (method, trained parts, saved folder), each case trained once."""
    examples = noise_examples(tmp_path_factory.mktemp("images"), 2, seed=0)
    done = {}

    def get(case):
        if case not in done:
            method, schedule = method_of(case)
            parts = load_components("tiny")
            train(method, schedule, parts, [Concept(examples, "sks", "dog")], resolution=RESOLUTION, seed=0)
            folder = tmp_path_factory.mktemp(case) / "model"
            folder.mkdir()
            method.save(parts, folder)
            done[case] = method, parts, folder
        return done[case]
    return get


def base_pipeline() -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(resolve_pretrained("tiny"))


@pytest.fixture(scope="module")
def base():
    return base_pipeline()


def load_lora(folder: Path) -> StableDiffusionPipeline:
    pipe = base_pipeline()
    pipe.load_lora_weights(folder)
    return pipe


def load_embedding(folder: Path) -> StableDiffusionPipeline:
    pipe = base_pipeline()
    pipe.load_textual_inversion(folder)
    return pipe


def load_embedding_and_kv(folder: Path) -> StableDiffusionPipeline:
    pipe = load_embedding(folder)
    pipe.unet.load_state_dict(load_file(folder / KV), strict=False)
    return pipe


# How a user opens each method's artefact with stock diffusers.
STOCK_LOAD = {"dreambooth": StableDiffusionPipeline.from_pretrained, "lora": load_lora,
              "textual_inversion": load_embedding, "custom_diffusion": load_embedding_and_kv}


def as_saved(method, parts):
    """The trained parts as the artefact holds them: DreamBooth writes its trained models in float16, so
    they are rounded to float16 (and back: float16 -> float32 is exact, so a reload must match them exactly).
    The other methods save their weights in float32."""
    if not isinstance(method, DreamBooth):
        return parts
    rounded = {"unet": copy.deepcopy(parts.unet).half().float()}
    if method.trains_text_encoder:
        rounded["text_encoder"] = copy.deepcopy(parts.text_encoder).half().float()
    return dataclasses.replace(parts, **rounded)


@torch.no_grad()
def outputs(model, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Text-encoder and UNet outputs of `model` (a pipeline or Components) for `prompt`."""
    text = model.text_encoder(tokenize(model.tokenizer, [prompt]))[0]
    return text, model.unet(LATENTS, TIMESTEP, text).sample


def assert_same(actual, expected):
    # Measured equal on CPU; 1e-6 leaves room for float32 reordering (Custom Diffusion trains through its own
    # attention processor, the reload uses the default one). A lost LoRA alpha is off by 0.75 here.
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", ["dreambooth", "dreambooth_text_encoder", "lora", "lora_text_encoder",
                                  "textual_inversion", "custom_diffusion"])
def test_artefact_loads_into_stock_diffusers_as_trained(case, artefact, base):
    method, parts, folder = artefact(case)
    prompt = f"a photo of {method.token('sks')} dog"
    trained, untrained = outputs(as_saved(method, parts), prompt), outputs(base, prompt)
    # Training moved the outputs: the text encoder's only where it trained.
    assert torch.equal(trained[0], untrained[0]) == (not method.trains_text_encoder)
    assert (trained[1] - untrained[1]).abs().max() > 1e-3
    assert_same(outputs(STOCK_LOAD[CASES[case][0]](folder), prompt), trained)
    # What the sample stage does: the artefact applied to the base pipeline by a method fresh from params.
    pipe = load_pipeline("tiny")
    method_of(case)[0].load_into(pipe, folder)
    assert_same(outputs(pipe, prompt), trained)


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def dtypes(safetensors_file: Path) -> set[torch.dtype]:
    with safe_open(safetensors_file, "pt") as f:
        return {f.get_tensor(key).dtype for key in f.keys()}


@pytest.mark.parametrize("case", ["dreambooth", "dreambooth_text_encoder"])
def test_dreambooth_folder_is_the_base_pipeline_with_its_trained_models_in_float16(case, artefact):
    method, parts, folder = artefact(case)
    ours, base = digests(folder), digests(Path(resolve_pretrained("tiny")))
    del base[MANIFEST]  # the built model's own bookkeeping, not a part of the pipeline
    trained = {"unet": "diffusion_pytorch_model.safetensors"}
    if method.trains_text_encoder:
        trained["text_encoder"] = "model.safetensors"
    assert ours.keys() == base.keys()
    # The other components are the base model's files, byte for byte: DVC stores them once.
    assert all(ours[path] == base[path] for path in ours if path.split("/")[0] not in trained)
    assert all(dtypes(folder / name / file) == {torch.float16} for name, file in trained.items())
    assert parts.unet.dtype == parts.text_encoder.dtype == torch.float32  # saving did not round the trained models


def test_dreambooth_load_into_casts_to_the_pipelines_dtype(artefact):
    method, _, folder = artefact("dreambooth")
    pipe = load_pipeline("tiny", torch_dtype=torch.bfloat16)
    method.load_into(pipe, folder)
    for model in (pipe.unet, pipe.text_encoder):
        assert model.dtype == torch.bfloat16 and model.device == pipe.device


def test_lora_file_is_byte_reproducible(artefact, tmp_path):
    """safetensors writes its metadata keys, and diffusers a set's items, in an order that changes from save to
    save (and process to process): the saved file has both sorted."""
    method, parts, folder = artefact("lora")
    data = (folder / WEIGHTS).read_bytes()
    header = data[8 : 8 + int.from_bytes(data[:8], "little")]
    assert header.index(b'"format"') < header.index(b'"lora_adapter_metadata"')
    targets = json.loads(json.loads(header)["__metadata__"]["lora_adapter_metadata"])["unet.target_modules"]
    assert targets == sorted(targets)
    for _ in range(3):
        method.save(parts, tmp_path)
        assert (tmp_path / WEIGHTS).read_bytes() == data
