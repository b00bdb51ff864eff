"""Merging two single-concept models (dreamstudy.multi.merge), known answers on the tiny model: LoRA sums at
run time, fused, and saved as one `cat` file agree; `linear` adds cross terms; Textual Inversion tokens load
side by side; Custom Diffusion's merged K/V reproduce each concept's K/V on its prompts; bad pairs are refused.
The single-concept artefacts get random weights (no training): merging only needs them to differ."""

import math
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dreamstudy.methods.custom_diffusion import KV, CustomDiffusion
from dreamstudy.methods.lora import WEIGHTS, Lora
from dreamstudy.methods.registry import tokenize
from dreamstudy.methods.tokens import EMBEDS, NewToken
from dreamstudy.models.loading import load_components, load_pipeline, resolve_pretrained
from dreamstudy.multi.merge import (
    concept_prompts,
    fuse_loras,
    load_embeddings,
    load_loras,
    load_merged_custom_diffusion,
    merge_custom_diffusion,
    merge_models,
    save_merged_lora,
    text_features,
)

PROMPT = "a photo of sks dog"
LATENTS = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))


def stock() -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(resolve_pretrained("tiny"))


@torch.no_grad()
def outputs(pipe) -> tuple[torch.Tensor, torch.Tensor]:
    text = pipe.text_encoder(tokenize(pipe.tokenizer, [PROMPT]))[0]
    return text, pipe.unet(LATENTS, 500, text).sample


def assert_same(actual, expected, atol=1e-5):  # float32 sums in another order: measured <= 1.5e-6 here
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=atol)


def differs(actual, expected) -> bool:
    return (actual[1] - expected[1]).abs().max() > 1e-3


def make_lora(folder: Path, rank: int, alpha: float, text_encoder: bool, seed: int) -> Path:
    """A LoRA folder as Lora.save writes it, with random A and B (B starts at zero in training)."""
    parts, method = load_components("tiny"), Lora(rank=rank, alpha=alpha, trains_text_encoder=text_encoder)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.prepare(parts, ["sks"], ["dog"]):
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    folder.mkdir(parents=True)
    method.save(parts, folder)
    return folder


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    """a: rank 2 with the text encoder; b: rank 4, UNet only; c: rank 2 (linear needs equal ranks), UNet only."""
    root = tmp_path_factory.mktemp("loras")
    specs = {"a": (2, 4.0, True, 1), "b": (4, 1.0, False, 2), "c": (2, 2.0, False, 3)}
    return {name: make_lora(root / name, *spec) for name, spec in specs.items()}


def stock_lora(folder: Path) -> StableDiffusionPipeline:
    pipe = stock()
    pipe.load_lora_weights(folder)
    return pipe


@pytest.mark.parametrize("mode", ["sum", "average"])
def test_run_time_merge_equals_fused_and_the_saved_cat_file(loras, mode, tmp_path):
    pipe = load_pipeline("tiny")
    names = load_loras(pipe, [loras["a"], loras["b"]], mode)
    merged = outputs(pipe)
    assert differs(merged, outputs(stock())) and differs(merged, outputs(stock_lora(loras["a"])))
    save_merged_lora(pipe, names, tmp_path)
    assert_same(outputs(pipe), merged)  # saving left the pipeline as it was
    assert_same(outputs(stock_lora(tmp_path)), merged)
    fuse_loras(pipe, names)
    assert not pipe.get_list_adapters()
    assert_same(outputs(pipe), merged)


def test_average_is_half_the_sum(loras):
    """W0 + (d_a + d_b)/2 is the midpoint of W0 and W0 + d_a + d_b: on the fused weights, exactly."""
    fused = {}
    for mode in ("sum", "average"):
        pipe = load_pipeline("tiny")
        fuse_loras(pipe, load_loras(pipe, [loras["a"], loras["b"]], mode))
        fused[mode] = pipe.unet.state_dict()
    base = stock().unet.state_dict()
    for key, w0 in base.items():
        torch.testing.assert_close(fused["average"][key], (w0 + fused["sum"][key]) / 2, rtol=0, atol=1e-6)


def test_one_adapter_at_weight_zero_is_the_other_model(loras, tmp_path):
    pipe = load_pipeline("tiny")
    names = load_loras(pipe, [loras["a"], loras["b"]])
    pipe.set_adapters(names, adapter_weights=[1.0, 0.0])
    single = outputs(stock_lora(loras["a"]))
    assert_same(outputs(pipe), single)
    assert_same(outputs(stock_lora(save_merged_lora(pipe, names, tmp_path))), single)


def lora_layer(folder: Path, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    with safe_open(folder / WEIGHTS, "pt") as f:
        return f.get_tensor(f"unet.{layer}.lora.down.weight"), f.get_tensor(f"unet.{layer}.lora.up.weight")


def test_linear_adds_cross_terms_cat_does_not(loras, tmp_path):
    """peft's `linear` forms (sum_k sqrt(s_k) B_k)(sum_k sqrt(s_k) A_k): the sum of the s_k B_k A_k plus
    sqrt(s_a s_c) (B_a A_c + B_c A_a)."""
    pipe = load_pipeline("tiny")
    names = load_loras(pipe, [loras["a"], loras["c"]])
    merged = outputs(pipe)
    assert_same(outputs(stock_lora(save_merged_lora(pipe, names, tmp_path / "cat"))), merged)
    linear = save_merged_lora(pipe, names, tmp_path / "linear", combination_type="linear")
    assert differs(outputs(stock_lora(linear)), merged)

    layer = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k"
    (a_a, b_a), (a_c, b_c), (a_l, b_l) = (lora_layer(f, layer) for f in (loras["a"], loras["c"], linear))
    s_a, s_c = 4.0 / 2, 2.0 / 2  # alpha / rank
    expected = s_a * b_a @ a_a + s_c * b_c @ a_c + math.sqrt(s_a * s_c) * (b_a @ a_c + b_c @ a_a)
    torch.testing.assert_close(b_l @ a_l, expected, rtol=0, atol=1e-6)
    other = load_pipeline("tiny")
    with pytest.raises(ValueError, match="same r"):  # and it refuses different ranks
        save_merged_lora(other, load_loras(other, [loras["a"], loras["b"]]), tmp_path / "x", combination_type="linear")


def test_loras_of_different_base_models_or_the_same_lora_twice_are_refused(loras, tmp_path):
    a = loras["a"]
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    # Another base model: every A reads 48 features instead of 32.
    with safe_open(a / WEIGHTS, "pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
        metadata = f.metadata()
    others = [tmp_path / "other0", tmp_path / "other1"]
    for value, other in enumerate(others):
        other.mkdir()
        save_file({key: torch.full((t.shape[0], 48), value) if ".down." in key else t for key, t in tensors.items()},
                  other / WEIGHTS, metadata=metadata)
    for pair in ([a, a], [a, copy], [a, others[0]]):
        with pytest.raises(ValueError, match=f"{a}.*{pair[1]}"):
            load_loras(load_pipeline("tiny"), pair)
    with pytest.raises(ValueError, match=f"{others[0]} does not load into this pipeline.*size mismatch"):
        load_loras(load_pipeline("tiny"), others)  # both of one other base model


def write_embedding(folder: Path, token: str, seed: int) -> Path:
    folder.mkdir(parents=True)
    save_file({token: torch.randn(1, 32, generator=torch.Generator().manual_seed(seed))}, folder / EMBEDS)
    return folder


def test_two_textual_inversion_tokens_load_side_by_side(tmp_path):
    folders = [write_embedding(tmp_path / "x", "<x1>", 1), write_embedding(tmp_path / "y", "<y1>", 2)]
    pipe = stock()
    assert load_embeddings(pipe, folders) == ["<x1>", "<y1>"]
    token_ids = pipe.tokenizer.convert_tokens_to_ids(["<x1>", "<y1>"])
    rows = pipe.text_encoder.get_input_embeddings().weight
    for token_id, folder in zip(token_ids, folders):
        assert torch.equal(rows[token_id], next(iter(load_file(folder / EMBEDS).values()))[0])
    prompt_ids = tokenize(pipe.tokenizer, ["a photo of <x1> dog with <y1> toy"])[0].tolist()
    assert [prompt_ids.count(i) for i in token_ids] == [1, 1]

    same = write_embedding(tmp_path / "z", "<x1>", 3)
    with pytest.raises(ValueError, match=f"{folders[0]}.*{same}.*'<x1>'"):
        load_embeddings(stock(), [folders[0], same])


def test_composed_textual_inversion_loads_as_a_jointly_trained_one_into_a_stock_pipeline(tmp_path):
    folders = [write_embedding(tmp_path / "x", "<x1>", 1), write_embedding(tmp_path / "y", "<y1>", 2)]
    merge_models("textual_inversion_compose", stock(), [(folders[0], "dog"), (folders[1], "toy")], tmp_path / "xy")
    composed, separate = stock(), stock()
    NewToken().load_into(composed, tmp_path / "xy")  # the method's loader: stock load_textual_inversion
    load_embeddings(separate, folders)
    assert torch.equal(composed.text_encoder.get_input_embeddings().weight,
                       separate.text_encoder.get_input_embeddings().weight)
    with pytest.raises(ValueError, match="learned the same token"):
        merge_models("textual_inversion_compose", stock(), [(folders[0], "dog"), (write_embedding(
            tmp_path / "z", "<x1>", 3), "toy")], tmp_path / "xz")
    with pytest.raises(ValueError, match="'dreambooth_sum' is not a merge"):
        merge_models("dreambooth_sum", stock(), [(folders[0], "dog")], tmp_path / "no")


def make_custom_diffusion(folder: Path, token: str, seed: int) -> Path:
    """A CD folder as CustomDiffusion.save writes it, its K/V and token row moved at random from the base's."""
    parts, method = load_components("tiny"), CustomDiffusion()
    kv = method.prepare(parts, [token], ["dog"])[:-1]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in kv:
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
        method.learned.weight(parts)[method.learned.ids[0]] += torch.randn(32, generator=generator)
    folder.mkdir(parents=True)
    method.save(parts, folder)
    return folder


@pytest.fixture(scope="module")
def custom_diffusions(tmp_path_factory):
    root = tmp_path_factory.mktemp("cd")
    return [(make_custom_diffusion(root / "x", "<x1>", 1), "dog"),
            (make_custom_diffusion(root / "y", "<y1>", 2), "teddy bear")]


def with_text_bias(pipe: StableDiffusionPipeline) -> StableDiffusionPipeline:
    """The tiny model's random init leaves its text encoder's final LayerNorm without a bias, so every text
    feature sums to zero: they span a hyperplane, and CD's S = R^T R is singular. A trained CLIP's LayerNorm has
    a bias; this gives the tiny one a fixed random one."""
    norm = next(m for name, m in pipe.text_encoder.named_modules() if name.endswith("final_layer_norm"))
    with torch.no_grad():
        norm.bias.copy_(torch.randn(norm.bias.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    return pipe


def test_custom_diffusion_merge_keeps_each_concepts_kv_on_its_prompts(custom_diffusions, tmp_path):
    pipe = with_text_bias(load_pipeline("tiny"))
    merged = merge_custom_diffusion(pipe, custom_diffusions, tmp_path)
    base = stock().unet.state_dict()
    assert merged.keys() == load_file(custom_diffusions[0][0] / KV).keys()
    # A stock pipeline loads the artefact: both tokens, then the merged K/V.
    loaded = with_text_bias(stock())
    loaded.load_textual_inversion([str(tmp_path / f"learned_embeds_{i}.safetensors") for i in range(2)])
    assert not loaded.unet.load_state_dict(load_file(tmp_path / KV), strict=False).unexpected_keys
    helper = stock()  # and the module's loader does the same
    load_merged_custom_diffusion(helper, tmp_path)
    assert all(torch.equal(helper.unet.get_parameter(key), weight) for key, weight in merged.items())
    rows = [p.text_encoder.get_input_embeddings().weight[p.tokenizer.convert_tokens_to_ids(["<x1>", "<y1>"])]
            for p in (helper, loaded)]
    assert torch.equal(*rows)
    for (folder, class_name), token in zip(custom_diffusions, ["<x1>", "<y1>"]):
        own = load_file(folder / KV)
        features = text_features(loaded, concept_prompts(token, class_name))
        torch.testing.assert_close(features, text_features(pipe, concept_prompts(token, class_name)))
        for key, weight in merged.items():
            assert (weight - own[key]).abs().max() > 1e-3 and (weight - base[key]).abs().max() > 1e-3
            # C_i W^T = C_i W_i^T, the loaded model's weight on the loaded model's features.
            actual = features @ loaded.unet.get_parameter(key).detach().T
            torch.testing.assert_close(actual, features @ own[key].T, rtol=1e-4, atol=1e-4)


def test_custom_diffusion_merge_refuses_singular_regularisation_features(custom_diffusions, tmp_path):
    with pytest.raises(ValueError, match="rank 31 < text width 32"):  # the tiny model as it is
        merge_custom_diffusion(load_pipeline("tiny"), custom_diffusions, tmp_path)
    with pytest.raises(ValueError, match=r"rank \d < text width 32"):  # too few captions
        merge_custom_diffusion(with_text_bias(load_pipeline("tiny")), custom_diffusions, tmp_path, ["a dog"] * 9)


def test_custom_diffusion_merge_refuses_the_same_concept_or_token_twice(custom_diffusions, tmp_path):
    (x, dog), (y, bear) = custom_diffusions
    with pytest.raises(ValueError, match=f"{x}.*{x}"):
        merge_custom_diffusion(load_pipeline("tiny"), [(x, dog), (x, dog)], tmp_path)
    same_token = tmp_path / "same"
    shutil.copytree(y, same_token)
    save_file({"<x1>": torch.zeros(1, 32)}, same_token / EMBEDS)
    with pytest.raises(ValueError, match=f"{x}.*{same_token}.*token"):
        merge_custom_diffusion(load_pipeline("tiny"), [(x, dog), (same_token, bear)], tmp_path / "out")
