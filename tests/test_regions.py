"""Regionally controllable sampling (dreamstudy.multi.regions), known answers on the tiny model at 32 px:
no regions = the stock pipeline; one whole-image box = sampling with its prompt; a left-half box changes the
cross-attention output on the left half only; overlapping boxes average; bad boxes are refused by name; the
original attention processors come back."""

import math

import numpy as np
import pytest
import torch

from dreamstudy.models.loading import load_pipeline
from dreamstudy.multi.regions import (
    Region,
    RegionalAttnProcessor,
    as_regions,
    box_mask,
    layer_size,
    regional_pipeline_call,
    regions_installed,
)

SIZE = 32  # latent 4 x 4 at the cross-attention layers of the down and up blocks, 2 x 2 in the mid block
GLOBAL, OTHER = "a photo of a dog on the grass", "a red cube in the snow"
CALL = dict(height=SIZE, width=SIZE, num_inference_steps=2, guidance_scale=7.5, output_type="np")


@pytest.fixture(scope="module")
def pipe():
    pipe = load_pipeline("tiny", device="cpu", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded():
    return torch.Generator().manual_seed(0)


def test_no_regions_is_the_stock_pipeline(pipe):
    stock = pipe(GLOBAL, generator=seeded(), **CALL).images
    regional = regional_pipeline_call(pipe, GLOBAL, [], generator=seeded(), **CALL).images
    np.testing.assert_array_equal(regional, stock)


def test_one_box_over_the_whole_image_is_sampling_with_its_prompt(pipe):
    stock = pipe(OTHER, generator=seeded(), **CALL).images
    regional = regional_pipeline_call(pipe, GLOBAL, [Region((0, 0, 1, 1), OTHER)], generator=seeded(), **CALL)
    np.testing.assert_allclose(regional.images, stock, rtol=0, atol=1e-6)  # bit-identical on this CPU
    assert np.abs(pipe(GLOBAL, generator=seeded(), **CALL).images - stock).max() > 1e-3  # the prompts matter


def test_whole_image_box_with_a_batch_a_negative_prompt_and_a_wide_image(pipe):
    """The region embeddings follow the pipeline's batch layout: [negatives; prompts], num_images_per_prompt."""
    call = dict(CALL, width=2 * SIZE, negative_prompt=["blurry", "dark"], num_images_per_prompt=2)
    stock = pipe([OTHER, OTHER], generator=seeded(), **call).images
    regional = regional_pipeline_call(pipe, [GLOBAL, "a cat"], [Region((0, 0, 1, 1), OTHER)], generator=seeded(),
                                      **call).images
    assert regional.shape == (4, SIZE, 2 * SIZE, 3)
    np.testing.assert_allclose(regional, stock, rtol=0, atol=1e-6)


def test_a_left_half_box_changes_the_left_half_only(pipe):
    layer = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2  # the first: same inputs in both
    seen = []
    hook = layer.register_forward_hook(lambda module, args, output: seen.append(output.detach().clone()))
    try:
        pipe(GLOBAL, generator=seeded(), **CALL)
        regional_pipeline_call(pipe, GLOBAL, [Region((0, 0, 0.5, 1), OTHER)], generator=seeded(), **CALL)
    finally:
        hook.remove()
    side = SIZE // pipe.vae_scale_factor
    first = len(seen) // 2  # each run's first UNet call (PNDM makes 3 of them in 2 steps): the same inputs
    stock, regional = (seen[i].reshape(2, side, side, -1) for i in (0, first))  # [negative; prompt] rows
    torch.testing.assert_close(regional[:, :, side // 2:], stock[:, :, side // 2:], rtol=0, atol=0)  # right
    torch.testing.assert_close(regional[0], stock[0], rtol=0, atol=0)  # the unconditional half: everywhere
    assert (regional[1, :, :side // 2] - stock[1, :, :side // 2]).abs().amin(dim=-1).gt(0).all()  # left


def test_overlapping_boxes_average_and_replace_hard():
    """A stand-in inner processor whose output is the mean of its embedding: each cell's value tells whose."""
    def inner(attn, hidden_states, encoder_hidden_states=None, attention_mask=None):
        return encoder_hidden_states.mean(dim=1, keepdim=True).expand(-1, hidden_states.shape[1], -1).clone()

    a, b, g = (torch.full((1, 3, 2), v) for v in (1.0, 3.0, 10.0))
    processor = RegionalAttnProcessor(inner, [(a, (0, 0, 0.75, 1)), (b, (0.5, 0, 1, 1))], latent_size=(4, 4))
    out = processor(None, torch.zeros(1, 16, 2), encoder_hidden_states=g).reshape(4, 4, 2)[..., 0]
    expected = torch.tensor([1.0, 1.0, 2.0, 3.0]).expand(4, 4)  # columns: a, a, (a + b) / 2, b
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out = processor(None, torch.zeros(1, 4, 2), encoder_hidden_states=g).reshape(2, 2, 2)[..., 0]  # 2 x 2 layer:
    torch.testing.assert_close(out, torch.tensor([1.0, 3.0]).expand(2, 2), rtol=0, atol=0)  # a's box ends at 1.5


@pytest.mark.parametrize("box, words", [
    ((-0.1, 0, 1, 1), "inside [0, 1]"),
    ((0, 0, 1.2, 1), "inside [0, 1]"),
    ((0, 0, 1, float("nan")), "inside [0, 1]"),
    ((0.5, 0, 0.5, 1), "empty"),
    ((0, 0.7, 1, 0.2), "empty"),
    ((0, 0, 1), "4 numbers"),
    ((0, 0, 1, 1, 1), "4 numbers"),
    (("left", 0, 1, 1), "4 numbers"),
    (None, "4 numbers"),
])
def test_bad_boxes_are_refused_by_name(box, words):
    with pytest.raises(ValueError, match=r"Region\(prompt='a dog'\): box") as error:
        Region(box, "a dog")
    assert words in str(error.value)
    with pytest.raises(ValueError, match=r"regions\[1\]: Region\(prompt='a dog'\): box"):
        as_regions([Region((0, 0, 1, 1), "a cat"), (box, "a dog")])


def test_the_original_processors_come_back(pipe):
    before = pipe.unet.attn_processors
    regional_pipeline_call(pipe, GLOBAL, [Region((0, 0, 0.5, 1), OTHER)], generator=seeded(), **CALL)
    after = pipe.unet.attn_processors
    assert {k: type(v) for k, v in after.items()} == {k: type(v) for k, v in before.items()}
    assert all(after[k] is before[k] for k in before)
    with pytest.raises(RuntimeError, match="boom"):
        with regions_installed(pipe, [Region((0, 0, 1, 1), OTHER)], GLOBAL, height=SIZE, width=SIZE):
            assert any(type(v).__name__ == "RegionalAttnProcessor" for v in pipe.unet.attn_processors.values())
            assert not any(type(v).__name__ == "RegionalAttnProcessor"
                           for k, v in pipe.unet.attn_processors.items() if "attn1" in k)
            raise RuntimeError("boom")
    assert all(pipe.unet.attn_processors[k] is before[k] for k in before)


def test_layer_sizes_and_masks():
    assert layer_size(32, (4, 8)) == (4, 8) and layer_size(8, (4, 8)) == (2, 4)  # 32 x 64 px
    assert layer_size(9, (5, 5)) == (3, 3) and layer_size(4, (5, 5)) == (2, 2)  # 40 px: the UNet rounds up
    with pytest.raises(ValueError, match="downsampling"):
        layer_size(6, (4, 4))
    left = box_mask((0, 0, 0.5, 1), 2, 4).reshape(2, 4)
    assert left[:, :2].all() and not left[:, 2:].any()
    assert box_mask((0.3, 0, 1, 1), 1, 10).sum() == 7  # 0.3 x 10 = 3.0000000000000004 still starts at cell 3
    assert not box_mask((0.1, 0.1, 0.2, 0.2), 4, 4).any()  # no whole cell: the region vanishes at this layer
    assert math.isclose(box_mask((0.25, 0.25, 0.75, 0.75), 4, 4).float().mean().item(), 0.25)
