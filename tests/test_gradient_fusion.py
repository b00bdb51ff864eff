"""Whole-model gradient fusion (dreamstudy.multi.gradient_fusion), known answers on a small float64 MLP and
on the tiny model: a concept fused with itself, or two identical LoRAs, give W0 + dW where the Gram is
full rank; K/V see each concept's token and EOS features only, and reproduce each concept on them; only
[in, in] Grams are held (LBFGS keeps inputs); no hook survives the call, error or not."""

import copy

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from dreamstudy.methods.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS
from dreamstudy.models.loading import load_components
from dreamstudy.multi.edlora import add_layerwise_token, cross_attention_layers, encode_layerwise
from dreamstudy.multi.fusion import activation_rtol
from dreamstudy.multi.gradient_fusion import (
    ActivationRecorder,
    Concept,
    effective_weight,
    fuse,
    is_kv,
    kv_run,
    lora_layers,
    prompt_run,
    record_concept,
    sample_run,
    weights_applied,
)

F64 = torch.float64
TEMPLATE = "photo of a {}"


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(8, 6), nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def randomize_lora(model: nn.Module, seed: int, scale: float = 0.1) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)
    return model


def adapted_mlp(base: nn.Module, seed: int) -> nn.Module:
    config = LoraConfig(r=2, lora_alpha=2, target_modules=["fc1", "fc2"])
    return randomize_lora(inject_adapter_in_model(config, copy.deepcopy(base)), seed)


def mlp_run(seed: int, rows: int = 40):
    x = torch.randn(rows, 8, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return lambda model: model(x)


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return MLP().to(F64)


def hooks_left(*models) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for model in models for m in model.modules())


def test_one_concept_fused_with_itself_gives_its_weight(mlp):
    concept = adapted_mlp(mlp, seed=1)
    fused = fuse(mlp, [Concept(concept, mlp_run(2))])
    for name in ("fc1", "fc2"):
        expected = effective_weight(dict(concept.named_modules())[name])
        assert not torch.allclose(expected, getattr(mlp, name).weight)
        torch.testing.assert_close(getattr(fused, name).weight, expected, rtol=0, atol=1e-10)
    assert type(fused.fc1) is nn.Linear and torch.equal(fused.head.weight, mlp.head.weight)
    assert torch.equal(fused.fc1.bias, mlp.fc1.bias)
    assert not torch.equal(mlp.fc1.weight, fused.fc1.weight)  # the base is left as it was


def test_two_identical_loras_give_their_weight(mlp):
    a, b = adapted_mlp(mlp, seed=3), adapted_mlp(mlp, seed=3)  # same LoRA, different data
    fused = fuse(mlp, [Concept(a, mlp_run(4)), Concept(b, mlp_run(5))])
    for name in ("fc1", "fc2"):
        torch.testing.assert_close(getattr(fused, name).weight, effective_weight(dict(a.named_modules())[name]),
                                   rtol=0, atol=1e-10)


def test_lbfgs_keeps_inputs_and_agrees_with_the_closed_form(mlp):
    concepts = [Concept(adapted_mlp(mlp, seed=6), mlp_run(7, rows=3)),
                Concept(adapted_mlp(mlp, seed=8), mlp_run(9, rows=2))]
    recorded = record_concept(concepts[0], ["fc1", "fc2"], keep_inputs=True)
    assert recorded["fc1"].inputs.shape == (3, 8) and recorded["fc2"].inputs.shape == (3, 6)
    exact = fuse(mlp, concepts)  # 5 rows in 8 (fc1) and 6 (fc2) dimensions: rank deficient
    iterative = fuse(mlp, concepts, solver="lbfgs", iters=500, dtype=F64)
    for name in ("fc1", "fc2"):
        torch.testing.assert_close(getattr(iterative, name).weight, getattr(exact, name).weight, rtol=0, atol=1e-6)
    assert hooks_left(*(c.model for c in concepts)) == 0


def test_only_grams_are_held(mlp):
    concept = Concept(adapted_mlp(mlp, seed=10), mlp_run(11, rows=7))
    with ActivationRecorder(concept.model, ["fc1", "fc2"]) as recorder:
        concept.model(torch.randn(2, 3, 8, dtype=F64))  # any leading shape: rows are flattened
        concept.run(concept.model)
    assert recorder.inputs is None
    for name, n_in in (("fc1", 8), ("fc2", 6)):
        gram = recorder.grams[name]
        assert gram.rows == 13
        tensors = {k: v.shape for k, v in vars(gram).items() if isinstance(v, torch.Tensor)}
        assert tensors == {"gram": (n_in, n_in)}
    layers = record_concept(concept, ["fc1", "fc2"])
    assert layers["fc1"].inputs is None and layers["fc1"].gram.gram.shape == (8, 8)
    assert layers["fc2"].weight.shape == (5, 6)


def test_no_hook_survives(mlp):
    concept = adapted_mlp(mlp, seed=12)
    fuse(mlp, [Concept(concept, mlp_run(13))])
    assert hooks_left(concept) == 0

    def broken(model):
        model(torch.randn(4, 8, dtype=F64))
        raise RuntimeError("the run failed")

    with pytest.raises(RuntimeError, match="the run failed"):
        fuse(mlp, [Concept(concept, broken)])
    assert hooks_left(concept) == 0


def test_bad_layers_are_refused(mlp):
    concept = adapted_mlp(mlp, seed=14)
    with pytest.raises(ValueError, match="never called"):
        fuse(mlp, [Concept(concept, lambda model: model.fc1(torch.randn(9, 8, dtype=F64)))])
    with pytest.raises(ValueError, match="no such layers"):
        fuse(mlp, [Concept(concept, mlp_run(15))], layers=["fc9"])
    with pytest.raises(ValueError, match="not a plain nn.Linear"):
        fuse(concept, [Concept(concept, mlp_run(15))])  # an adapted model as the base
    with pytest.raises(ValueError, match="no layers"):
        fuse(mlp, [Concept(copy.deepcopy(mlp), mlp_run(15))])


@pytest.fixture(scope="module")
def sd():
    """The tiny model with two layer-wise concepts installed, its plain parts, and per concept a text
    encoder and a UNet with that concept's random LoRA (rank 2, text-encoder and UNet attention)."""
    parts = load_components("tiny")
    n = len(cross_attention_layers(parts.unet))
    width = parts.text_encoder.config.hidden_size
    tokens = [add_layerwise_token(parts.tokenizer, parts.text_encoder, token, n,
                                  torch.randn(n, width, generator=torch.Generator().manual_seed(seed)) * 0.02)
              for seed, token in enumerate(("<a>", "<b>"))]
    adapted = []
    for seed in (1, 2):
        text_encoder, unet = copy.deepcopy(parts.text_encoder), copy.deepcopy(parts.unet)
        text_encoder.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=list(TEXT_ENCODER_TARGETS)))
        unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=list(UNET_TARGETS)))
        adapted.append((randomize_lora(text_encoder, seed), randomize_lora(unet, seed + 10)))
    return parts, n, tokens, adapted


def concept_prompts(token) -> list[str]:
    return [TEMPLATE.format(token.token), token.token]  # MoS's two prompts per concept


def bound(token, n) -> list[str]:
    return [token.bind(p, i) for p in concept_prompts(token) for i in range(n)]


def range_projector(gram: torch.Tensor, rtol: float = 1e-9) -> torch.Tensor:
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    u = eigenvectors[:, eigenvalues > rtol * eigenvalues[-1]]
    return u @ u.T


def test_text_encoder_fused_with_itself_gives_its_weight(sd):
    parts, n, tokens, adapted = sd
    text_encoder = adapted[0][0]
    prompts = bound(tokens[0], n) + [  # more rows than MoS's prompts give: ordinary captions
        "a dog running on a sandy beach at sunset", "a red backpack leaning against a tree",
        "a yellow rubber duck floating in a bathtub", "a teapot and two cups on a tray"]
    concept = Concept(text_encoder, prompt_run(parts.tokenizer, prompts))
    names = lora_layers(text_encoder)
    assert len(names) == 4 * parts.text_encoder.config.num_hidden_layers
    layers = record_concept(concept, names)
    fused = fuse(parts.text_encoder, [concept])
    fused_modules, base_modules = dict(fused.named_modules()), dict(parts.text_encoder.named_modules())
    for name in names:
        gram = layers[name].gram.gram
        # q/k/v read a LayerNorm's output, which at random init (weight 1, bias 0) has zero-mean rows: one
        # direction unseen, rank 31 of 32. out_proj's inputs span everything.
        rank = int(torch.linalg.matrix_rank(gram))
        assert rank == (32 if name.endswith("out_proj") else 31), name
        # W0 + dW on the directions the float32 activations resolve (fuse_layer's cutoff), W0 on the others: the
        # one unseen by q/k/v, and any below the activations' rounding
        w, w_i = fused_modules[name].weight.to(F64), layers[name].weight.to(F64)
        p = range_projector(gram, rtol=activation_rtol(32, torch.finfo(torch.float32).eps))
        w0 = base_modules[name].weight.to(F64)
        torch.testing.assert_close(w @ p, w_i @ p, rtol=0, atol=1e-4)
        torch.testing.assert_close(w - w @ p, w0 - w0 @ p, rtol=0, atol=1e-4)
        if rank < 32:
            assert not torch.allclose(w, w_i, rtol=0, atol=1e-4)


def test_mix_of_show_stages_on_the_tiny_model(sd):
    parts, n, tokens, adapted = sd
    # 1. text encoder, on each concept's prompts bound to its layer tokens
    text_concepts = [Concept(te, prompt_run(parts.tokenizer, bound(token, n)))
                     for token, (te, _) in zip(tokens, adapted)]
    text_encoder = fuse(parts.text_encoder, text_concepts)
    assert not lora_layers(text_encoder)

    # 2. K/V, on the fused text encoder's features at the concept token and EOS positions
    unet_layers = lora_layers(adapted[0][1])
    kv = [name for name in unet_layers if is_kv(name)]
    assert len(kv) == 2 * n
    kv_concepts = [Concept(unet, kv_run(parts.tokenizer, text_encoder, concept_prompts(token), [token]))
                   for token, (_, unet) in zip(tokens, adapted)]
    recorded = [record_concept(c, kv, keep_inputs=True) for c in kv_concepts]
    assert all(r[name].gram.rows == 4 for r in recorded for name in kv)  # 2 prompts x (token + EOS)
    kv_unet = fuse(parts.unet, kv_concepts, layers=kv)
    modules = dict(kv_unet.named_modules())
    for r in recorded:  # 8 rows in 32 dimensions: each concept's K/V outputs reproduced on its own inputs
        for name in kv:
            x = r[name].inputs
            torch.testing.assert_close(x @ modules[name].weight.T, x @ r[name].weight.T, rtol=0, atol=1e-4)

    # 3. the other UNet layers, on a 3-step sample at 32 px from each concept's model
    others = [name for name in unet_layers if not is_kv(name)]
    with torch.no_grad():
        contexts = [encode_layerwise(parts.tokenizer, text_encoder, [TEMPLATE.format(t.token)], [t], n)
                    for t in tokens]

    def sampled(context):
        sample = sample_run(parts.noise_scheduler, context, tokens=parts.tokenizer.model_max_length, steps=3,
                            latent_size=4)

        def run(unet):  # as MoS: each concept's model samples with the fused K/V
            with weights_applied(unet, kv_unet, kv):
                sample(unet)
                applied = dict(unet.named_modules())
                assert all(torch.allclose(effective_weight(applied[name]), modules[name].weight, atol=1e-6)
                           for name in kv)
        return run

    spatial = [Concept(unet, sampled(context)) for context, (_, unet) in zip(contexts, adapted)]
    kv_before = {name: effective_weight(dict(adapted[0][1].named_modules())[name]) for name in kv}
    recorded = record_concept(spatial[0], others)
    after = dict(adapted[0][1].named_modules())
    assert all(torch.equal(effective_weight(after[name]), kv_before[name]) for name in kv)  # put back
    assert recorded[others[0]].gram.rows == 3 * 16  # 3 steps x 4 x 4 latent positions (down block 0's to_q)
    unet = fuse(kv_unet, spatial, layers=others)
    fused, base = dict(unet.named_modules()), dict(parts.unet.named_modules())
    assert all(not torch.equal(fused[name].weight, base[name].weight) for name in unet_layers)
    assert all(torch.equal(fused[name].weight, modules[name].weight) for name in kv)
    assert hooks_left(*(unet for _, unet in adapted), *(te for te, _ in adapted)) == 0
