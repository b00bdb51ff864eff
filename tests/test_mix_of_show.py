"""ED-LoRA through the one trainer, and Mix-of-Show's gradient fusion of two ED-LoRA folders (the study's
`edlora_fusion`), on the tiny model: each parameter group trains at its own rate, every layer token learns a
row of its own, a stock pipeline given the artefact (`EdLora.load_into`) encodes and predicts exactly as the
trained model, and the fused model reproduces each concept's cross-attention K/V outputs on its own tokens."""

import shutil

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

from dreamstudy.augment.dataset import instance_caption
from dreamstudy.methods import get_method
from dreamstudy.methods.edlora import EMBEDDINGS, FUSED
from dreamstudy.methods.lora import WEIGHTS
from dreamstudy.methods.trainer import Concept, train
from dreamstudy.models.loading import load_components, resolve_pretrained
from dreamstudy.multi.edlora import cross_attention_layers
from dreamstudy.multi.mix_of_show import fuse_edloras
from dreamstudy.multi.regions import Region, regional_pipeline_call
from tests.helpers import noise_examples, smoke_train_params

RESOLUTION = 32
CONCEPTS = (("sks", "dog"), ("zwx", "backpack"))
RATES = {"lr": 1e-3, "text_encoder_lr": 1e-2, "embedding_lr": 5e-2}  # high: 3 steps must move everything


def stock_pipeline() -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(resolve_pretrained("tiny"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Per concept: the method, its trained parts, the optimizer's learning rates, the untrained embedding
    matrix, and the saved folder."""
    runs = []
    for number, (identifier, class_name) in enumerate(CONCEPTS):
        root = tmp_path_factory.mktemp(identifier)
        examples = noise_examples(root, 2, seed=20 + number, caption=instance_caption(identifier, class_name))
        method, schedule = get_method("edlora", smoke_train_params(
            edlora={"steps": 3, "prior_preservation": False, **RATES}))
        parts = load_components("tiny")
        before = parts.text_encoder.get_input_embeddings().weight.detach().clone()
        rates = []
        handle = register_optimizer_step_pre_hook(
            lambda optimizer, args, kwargs: rates.append([group["lr"] for group in optimizer.param_groups]))
        try:
            train(method, schedule, parts, [Concept(examples, identifier, class_name)], resolution=RESOLUTION, seed=0)
        finally:
            handle.remove()
        folder = root / "model"
        folder.mkdir()
        method.save(parts, folder)
        runs.append((method, parts, rates, before, folder))
    return runs


def test_edlora_trains_a_row_per_layer_at_its_own_rates(trained):
    method, parts, rates, before, folder = trained[0]
    assert rates == [[RATES["embedding_lr"], RATES["text_encoder_lr"], RATES["lr"]]] * 3
    concept = method.concepts[0]
    n = len(cross_attention_layers(parts.unet))
    assert concept.tokens == tuple(f"<sks>_{i}" for i in range(n))
    after = parts.text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(after[: len(before)], before)  # no row of the vocabulary moved
    rows = after[list(concept.ids)]
    # all start at "dog"'s embedding; each layer's token gets its own layer's gradient, so they part
    assert all(not torch.equal(rows[i], rows[j]) for i in range(n) for j in range(i))
    assert sorted(path.name for path in folder.iterdir()) == [EMBEDDINGS, WEIGHTS]
    assert set(load_file(folder / EMBEDDINGS)) == set(concept.tokens)


def test_a_stock_pipeline_loads_edlora_and_reproduces_the_trained_model(trained):
    method, parts, _, _, folder = trained[0]
    pipe = stock_pipeline()
    method.load_into(pipe, folder)
    prompt = "a photo of a <sks> dog on the beach"
    with torch.no_grad():
        ours = method.encode_text(parts.text_encoder, method.input_ids(parts.tokenizer, [prompt]))
        stock, negative = pipe.encode_prompt(prompt, "cpu", 1, True, "")
        torch.testing.assert_close(stock, ours, rtol=0, atol=1e-6)
        assert negative.shape == stock.shape  # laid out layer-wise too, for classifier-free guidance
        latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
        expected = parts.unet(latents, 500, ours).sample
        torch.testing.assert_close(pipe.unet(latents, 500, stock).sample, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("solver, tolerance", [("closed_form", 1e-4), ("lbfgs", 1e-3)])
def test_fused_pair_reproduces_each_concepts_kv_and_samples_with_regions(solver, tolerance, trained, tmp_path):
    """Either solver of `multi.fusion.solver`: Mix-of-Show's LBFGS (its 500 iterations on K/V) ends near the
    closed form's exact fit."""
    folders = [folder for *_, folder in trained]
    pipe = stock_pipeline()
    fuse_edloras(pipe, folders, tmp_path / "fused", solver=solver, text_iters=500, unet_iters=10, seed=0,
                 resolution=RESOLUTION)
    assert sorted(path.name for path in (tmp_path / "fused").iterdir()) == [EMBEDDINGS, FUSED]

    fused = stock_pipeline()
    trained[0][0].load_into(fused, tmp_path / "fused")
    base = stock_pipeline().unet.state_dict()
    weights = load_file(tmp_path / "fused" / FUSED)
    assert all(not torch.equal(value, base[key.removeprefix("unet.")]) for key, value in weights.items()
               if key.startswith("unet."))
    # K/V: each concept's own outputs on its concept-token features, reproduced (MoS's step 2 fits them exactly:
    # 2 prompts x (token + EOS) rows per concept and layer, far fewer than the 32 dimensions)
    with torch.no_grad():
        for method, parts, *_ in trained:
            token = method.concepts[0]
            for layer, (_, attn) in enumerate(cross_attention_layers(fused.unet)):
                ids = fused.tokenizer(f"photo of a {token.bind(token.token, layer)}").input_ids
                position = ids.index(fused.tokenizer.convert_tokens_to_ids(token.tokens[layer]))
                features = fused.text_encoder(torch.tensor([ids]))[0][0, position]
                own = dict(parts.unet.named_modules())[name_of(parts.unet, layer)]
                for projection in ("to_k", "to_v"):
                    torch.testing.assert_close(getattr(attn, projection)(features),
                                               getattr(own, projection)(features), rtol=0, atol=tolerance)
    image = regional_pipeline_call(fused, "a <sks> dog and a <zwx> backpack",
                                   [Region((0, 0, 0.5, 1), "a <sks> dog"), Region((0.5, 0, 1, 1), "a <zwx> backpack")],
                                   height=RESOLUTION, width=RESOLUTION, num_inference_steps=3,
                                   generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape == (1, RESOLUTION, RESOLUTION, 3) and image.std() > 0


def name_of(unet, layer: int) -> str:
    return cross_attention_layers(unet)[layer][0]


def test_two_folders_of_one_concept_are_refused_by_name(trained, tmp_path):
    folder = trained[0][-1]
    copy = tmp_path / "again"
    shutil.copytree(folder, copy)
    with pytest.raises(ValueError, match=rf"{copy}.*<sks>"):
        fuse_edloras(stock_pipeline(), [folder, copy], tmp_path / "fused")
    assert not (tmp_path / "fused").exists()

