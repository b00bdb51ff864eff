"""Textual Inversion and Custom Diffusion on the tiny model: only the placeholder's embedding row (and,
for Custom Diffusion, the cross-attention K/V) change, and the artefacts hold just those (round trips:
tests/test_roundtrip.py); bad placeholder tokens are refused before training."""

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from dreamstudy.methods import get_method
from dreamstudy.methods.custom_diffusion import KV
from dreamstudy.methods.tokens import EMBEDS, LearnedTokens, check_token
from dreamstudy.methods.trainer import Concept, train
from dreamstudy.models.loading import load_components, resolve_pretrained
from tests.helpers import noise_examples, smoke_train_params

RESOLUTION = 32


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return noise_examples(tmp_path_factory.mktemp("images"), 3, seed=2)


def trained(name, examples, folder):
    """Train `name` for 4 steps (a high lr, so that 4 steps show) and save it into `folder`."""
    method, schedule = get_method(name, smoke_train_params(
        **{name: {"lr": 5e-2, "steps": 4, "batch_size": 2, "prior_preservation": False}}))
    parts = load_components("tiny")
    train(method, schedule, parts, [Concept(examples, "sks", "dog")], resolution=RESOLUTION, seed=0)
    folder.mkdir()
    method.save(parts, folder)
    return method, parts


@pytest.fixture(scope="module")
def ti(examples, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ti") / "weights"
    return (*trained("textual_inversion", examples, folder), folder)


@pytest.fixture(scope="module")
def cd(examples, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cd") / "weights"
    return (*trained("custom_diffusion", examples, folder), folder)


@pytest.fixture(scope="module")
def original():
    return load_components("tiny")


def stock_pipeline():
    pipe = StableDiffusionPipeline.from_pretrained(resolve_pretrained("tiny"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def embedding(parts):
    return parts.text_encoder.get_input_embeddings().weight.detach()


def assert_only_placeholder_row_changed(parts, original, init_row):
    """Every row but the placeholder's bit-identical; the placeholder's moved away from its init."""
    trained, before = embedding(parts), embedding(original)
    token_id = parts.tokenizer.convert_tokens_to_ids("<sks>")
    assert token_id == len(before) and trained.shape == (len(before) + 1, before.shape[1])
    assert torch.equal(trained[:token_id], before)
    assert not torch.allclose(trained[token_id], init_row)


def class_row(original, class_name="dog"):
    ids = original.tokenizer(class_name, add_special_tokens=False).input_ids
    return embedding(original)[ids].mean(0)


def test_ti_trains_only_the_placeholder_row(ti, original):
    _, parts, _ = ti
    assert_only_placeholder_row_changed(parts, original, class_row(original))
    for model in ("unet", "text_encoder"):
        now, before = getattr(parts, model).state_dict(), getattr(original, model).state_dict()
        changed = [k for k in now if now[k].shape != before[k].shape or not torch.equal(now[k], before[k])]
        assert changed == ([] if model == "unet" else [k for k in now if k.endswith("token_embedding.weight")])


def test_placeholder_starts_as_the_class_tokens_mean_and_alone_gets_gradient():
    parts = load_components("tiny")
    learned = LearnedTokens.add(parts, ["<sks>"], ["stuffed animal"])
    (row,) = learned.ids
    ids = parts.tokenizer("stuffed animal", add_special_tokens=False).input_ids
    assert len(ids) == 2 and torch.equal(embedding(parts)[row], embedding(parts)[ids].mean(0))
    # Gradient clipping sees the placeholder's row only, though the caption's other words have rows too.
    caption = parts.tokenizer("a photo of <sks> stuffed animal", return_tensors="pt").input_ids
    parts.text_encoder(caption)[0].square().sum().backward()
    grad = LearnedTokens.weight(parts).grad
    assert grad[row].abs().sum() > 0 and not grad[:row].any()


def test_ti_artefact_is_the_placeholders_row_under_its_token(ti):
    _, parts, folder = ti
    weights, row = load_file(folder / EMBEDS), embedding(parts)[parts.tokenizer.convert_tokens_to_ids("<sks>")]
    assert weights.keys() == {"<sks>"} and torch.equal(weights["<sks>"], row[None])  # [1, D] as textual_inversion.py


def test_bad_placeholders_are_refused_before_any_model_loads(ti):
    _, parts, _ = ti
    tokenizer = CLIPTokenizer.from_pretrained(resolve_pretrained("tiny"), subfolder="tokenizer")
    size = len(tokenizer)
    check_token(tokenizer, "<sks>")
    assert len(tokenizer) == size  # the check works on a copy
    for token in ("<|endoftext|>", "sks", "dog"):  # a special token, whole words of the vocabulary
        with pytest.raises(ValueError, match=r"\(from train.identifiers\) is already in the tokenizer's vocabulary"):
            check_token(tokenizer, token)
    with pytest.raises(ValueError, match="already in the tokenizer's vocabulary"):
        check_token(parts.tokenizer, "<sks>")  # a tokenizer that has learned it
    with pytest.raises(ValueError, match=r"\(from train.identifiers\) does not stay one token"):
        check_token(tokenizer, " ")  # would match between every two words


def test_cd_trains_only_cross_attention_kv_and_the_placeholder_row(cd, original):
    _, parts, folder = cd
    assert_only_placeholder_row_changed(parts, original, class_row(original))
    before = original.unet.state_dict()
    kv = load_file(folder / KV)
    cross_kv = {k for k in before if ".attn2.to_k." in k or ".attn2.to_v." in k}
    assert set(kv) == cross_kv and all(not torch.equal(kv[k], before[k]) for k in kv)
    # The UNet's own weights stay as they were: K/V train in the Custom Diffusion processors.
    now = parts.unet.state_dict()
    assert all(torch.equal(now[k], before[k]) for k in before)
    # Applied to a stock pipeline (by a fresh method object: loading needs no training state), the
    # artefact changes exactly those weights and adds the placeholder.
    pipe = stock_pipeline()
    get_method("custom_diffusion", smoke_train_params())[0].load_into(pipe, folder)
    loaded = pipe.unet.state_dict()
    assert {k for k in before if not torch.equal(loaded[k], before[k])} == cross_kv
    assert_only_placeholder_row_changed(pipe, original, class_row(original))


def test_cd_cpu_training_is_bit_reproducible(cd, examples, tmp_path):
    trained("custom_diffusion", examples, tmp_path / "again")
    for name in (KV, EMBEDS):
        assert (tmp_path / "again" / name).read_bytes() == (cd[2] / name).read_bytes()
