"""ED-LoRA's layer-wise embeddings (dreamstudy.multi.edlora), known answers on the tiny model: one token per
cross-attention layer (16 for SD 1.5's architecture); embedding i reaches layer i only; equal embeddings
condition as one plain token would; plain conditioning passes through the wrappers; bad tokens are refused."""

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel

from dreamstudy.methods.registry import tokenize
from dreamstudy.methods.tokens import add_token
from dreamstudy.models import sd15
from dreamstudy.models.loading import load_components
from dreamstudy.multi.edlora import (
    LayerwiseProcessor,
    add_layerwise_token,
    cross_attention_layers,
    encode_layerwise,
    install_layerwise,
    layerwise,
    uninstall_layerwise,
)

PROMPT = "a photo of a <c> on the beach"
LATENTS = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))  # 32 px
TIMESTEP = 500


@pytest.fixture
def parts():
    return load_components("tiny")


def kv_inputs(unet, encoder_hidden_states) -> list[torch.Tensor]:
    """What each cross-attention layer attends to (the input of its to_k), in layer order."""
    seen = {}
    layers = cross_attention_layers(unet)
    handles = [attn.to_k.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0].clone()))
               for i, (_, attn) in enumerate(layers)]
    try:
        with torch.no_grad():
            unet(LATENTS, TIMESTEP, encoder_hidden_states)
    finally:
        for handle in handles:
            handle.remove()
    return [seen[i] for i in range(len(layers))]


def test_one_token_per_cross_attention_layer(parts):
    with init_empty_weights():  # SD 1.5's UNet on the meta device: its structure, no memory
        sd_unet = UNet2DConditionModel.from_config(sd15.ARCHITECTURE["unet"])
    assert len(cross_attention_layers(sd_unet)) == 16
    names = [name for name, _ in cross_attention_layers(parts.unet)]
    assert names == ["down_blocks.0.attentions.0.transformer_blocks.0.attn2",
                     "mid_block.attentions.0.transformer_blocks.0.attn2",
                     "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
                     "up_blocks.1.attentions.1.transformer_blocks.0.attn2"]  # down -> mid -> up
    n = len(names)
    concept = add_layerwise_token(parts.tokenizer, parts.text_encoder, "<c>", n, "dog")
    assert concept.tokens == ("<c>_0", "<c>_1", "<c>_2", "<c>_3")
    assert [parts.tokenizer.convert_tokens_to_ids(t) for t in concept.tokens] == list(concept.ids)
    dog = parts.text_encoder.get_input_embeddings().weight[parts.tokenizer.convert_tokens_to_ids("dog</w>")]
    assert torch.equal(concept.embeddings(parts.text_encoder), dog.expand(n, -1))


def test_embedding_i_reaches_layer_i_only(parts):
    n = len(cross_attention_layers(parts.unet))
    generator = torch.Generator().manual_seed(1)
    rows = torch.randn(n, parts.text_encoder.config.hidden_size, generator=generator) * 0.02
    concept = add_layerwise_token(parts.tokenizer, parts.text_encoder, "<c>", n, rows)
    install_layerwise(parts.unet, parts.tokenizer.model_max_length)
    with torch.no_grad():
        before = kv_inputs(parts.unet, encode_layerwise(parts.tokenizer, parts.text_encoder, [PROMPT], [concept], n))
        weight = parts.text_encoder.get_input_embeddings().weight
        for i in range(n):
            original = weight[concept.ids[i]].clone()
            weight[concept.ids[i]] += 0.5
            after = kv_inputs(parts.unet, encode_layerwise(parts.tokenizer, parts.text_encoder, [PROMPT], [concept], n))
            weight[concept.ids[i]] = original
            changed = [not torch.equal(a, b) for a, b in zip(after, before)]
            assert changed == [j == i for j in range(n)], f"perturbing embedding {i} changed layers {changed}"


def test_equal_embeddings_condition_as_one_plain_token(parts):
    n = len(cross_attention_layers(parts.unet))
    vector = torch.randn(parts.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(2)) * 0.02
    concept = add_layerwise_token(parts.tokenizer, parts.text_encoder, "<c>", n, vector)
    plain_id = add_token(parts.tokenizer, "<p>")  # a Textual-Inversion-style single token, same embedding
    parts.text_encoder.resize_token_embeddings(len(parts.tokenizer), mean_resizing=False)
    with torch.no_grad():
        parts.text_encoder.get_input_embeddings().weight[plain_id] = vector
        plain = parts.text_encoder(tokenize(parts.tokenizer, [PROMPT.replace("<c>", "<p>")]))[0]
        expected = parts.unet(LATENTS, TIMESTEP, plain).sample
        features = encode_layerwise(parts.tokenizer, parts.text_encoder, [PROMPT], [concept], n)
        length = parts.tokenizer.model_max_length
        assert features.shape == (1, n * length, parts.text_encoder.config.hidden_size)
        with layerwise(parts.unet, length) as layers:
            assert layers == n
            actual = parts.unet(LATENTS, TIMESTEP, features).sample
            passed_through = parts.unet(LATENTS, TIMESTEP, plain).sample  # L tokens: the wrappers change nothing
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)  # text encoded in a batch of n vs 1
    torch.testing.assert_close(passed_through, expected, rtol=0, atol=0)
    assert not any(isinstance(attn.processor, LayerwiseProcessor) for _, attn in cross_attention_layers(parts.unet))


def test_layerwise_features_are_each_layers_bound_prompt(parts):
    n = len(cross_attention_layers(parts.unet))
    rows = torch.randn(n, parts.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(3))
    concept = add_layerwise_token(parts.tokenizer, parts.text_encoder, "<c>", n, rows)
    prompts = [PROMPT, "<c>"]
    length = parts.tokenizer.model_max_length
    with torch.no_grad():
        features = encode_layerwise(parts.tokenizer, parts.text_encoder, prompts, [concept], n)
        for b, prompt in enumerate(prompts):
            for i in range(n):
                alone = parts.text_encoder(tokenize(parts.tokenizer, [prompt.replace("<c>", f"<c>_{i}")]))[0][0]
                torch.testing.assert_close(features[b, i * length : (i + 1) * length], alone, rtol=0, atol=1e-5)


def test_install_wraps_once_and_uninstall_restores(parts):
    original = [type(attn.processor) for _, attn in cross_attention_layers(parts.unet)]
    install_layerwise(parts.unet, 77)
    install_layerwise(parts.unet, 77)
    processors = [attn.processor for _, attn in cross_attention_layers(parts.unet)]
    assert [p.index for p in processors] == list(range(len(processors)))
    assert not any(isinstance(p.processor, LayerwiseProcessor) for p in processors)
    with layerwise(parts.unet, 77):  # already installed: left installed afterwards
        pass
    assert all(isinstance(attn.processor, LayerwiseProcessor) for _, attn in cross_attention_layers(parts.unet))
    uninstall_layerwise(parts.unet)
    assert [type(attn.processor) for _, attn in cross_attention_layers(parts.unet)] == original


@pytest.mark.parametrize("token", ["dog", "<p>", "<c>_2"])
def test_taken_tokens_are_refused_by_name(parts, token):
    add_token(parts.tokenizer, "<p>")
    add_token(parts.tokenizer, "<c>_2")
    size = len(parts.tokenizer)
    concept_token = "<c>" if token == "<c>_2" else token
    with pytest.raises(ValueError, match=token):
        add_layerwise_token(parts.tokenizer, parts.text_encoder, concept_token, 4, "dog")
    assert len(parts.tokenizer) == size  # nothing added


def test_init_rows_of_the_wrong_shape_are_refused(parts):
    with pytest.raises(ValueError, match="<c>"):
        add_layerwise_token(parts.tokenizer, parts.text_encoder, "<c>", 4, torch.zeros(3, 32))
