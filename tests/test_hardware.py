"""The hardware switches of `train` (mixed_precision, gradient_checkpointing, use_8bit_adam), on the CPU.

No GPU is needed: bf16 autocast, gradient checkpointing and bitsandbytes' 8-bit AdamW run on the CPU too, so
each switch is shown to engage, in every model it concerns, and to leave what it must alone; fp16, which
needs CUDA, and 8-bit Adam without bitsandbytes are shown to be refused naming the setting.
"""

import pytest
import torch

from dreamstudy.methods import get_method, trainer
from dreamstudy.methods.trainer import Concept, Hardware, train
from dreamstudy.models.loading import load_components
from tests.helpers import noise_examples, smoke_train_params

STEPS = 3


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return noise_examples(tmp_path_factory.mktemp("images"), 2, seed=5, size=32)


def train_method(examples, hardware: Hardware, method_name="lora", watch=None, **changes):
    """`method_name` for STEPS steps; returns (losses, parts, forward calls of each `watch(parts)` module per step)."""
    method, schedule = get_method(method_name, smoke_train_params(
        **{method_name: {"steps": STEPS, "batch_size": 1, "prior_preservation": False} | changes}))
    parts = load_components("tiny")
    calls = []
    for module in (watch(parts),) if watch else ():
        module.register_forward_hook(lambda *_: calls.append(1))
    losses = []
    train(method, schedule, parts, [Concept(examples, "sks", "dog")], resolution=32, seed=0,
          hardware=hardware, log=lambda step, loss: losses.append(loss))
    return losses, parts, len(calls) / STEPS


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora" in name}


@pytest.fixture(scope="module")
def plain(examples):
    return train_method(examples, Hardware(), watch=decoder_resnet)


def decoder_resnet(parts):
    """The first layer of a decoder block, which gradients pass through on their way to the LoRA weights
    before it (the recomputation stops early: the block's own forward hooks do not fire again)."""
    return parts.unet.up_blocks[0].resnets[0].norm1


def last_text_layer(parts):
    """A layer of the text encoder's last block, which gradients pass on their way to the token embedding."""
    return parts.text_encoder.encoder.layers[-1].layer_norm1


def dtypes(model, trained: bool) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters() if p.requires_grad == trained}


def test_bf16_autocast_engages_and_keeps_float32_weights(examples, plain):
    losses, parts, _ = train_method(examples, Hardware(mixed_precision="bf16"))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses != plain[0]  # the UNet ran in bf16: its losses are not the float32 ones
    assert losses[0] == pytest.approx(plain[0][0], rel=0.05)  # ... but close to them
    assert all(w.dtype == torch.float32 for w in lora_weights(parts.unet).values())  # master weights stay float32


@pytest.mark.parametrize("method_name, frozen_text_encoder", [("lora", True), ("textual_inversion", False),
                                                               ("custom_diffusion", False), ("dreambooth", True)])
def test_bf16_holds_frozen_weights_in_bf16_and_trained_ones_in_float32(examples, method_name, frozen_text_encoder):
    """As diffusers' scripts: frozen weights in the autocast dtype (half the memory), trained ones float32;
    a text encoder with a trained row (Textual Inversion, Custom Diffusion) float32 whole."""
    losses, parts, _ = train_method(examples, Hardware(mixed_precision="bf16"), method_name)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert dtypes(parts.vae, trained=False) == {torch.bfloat16}
    assert dtypes(parts.unet, trained=True) <= {torch.float32}
    assert dtypes(parts.unet, trained=False) <= {torch.bfloat16}
    text_encoder = {p.dtype for p in parts.text_encoder.parameters()}
    assert text_encoder == ({torch.bfloat16} if frozen_text_encoder else {torch.float32})
    if method_name == "dreambooth":
        assert dtypes(parts.unet, trained=True) == {torch.float32} and not dtypes(parts.unet, trained=False)


def test_gradient_checkpointing_recomputes_and_changes_nothing_else(examples, plain):
    losses, parts, calls = train_method(examples, Hardware(gradient_checkpointing=True), watch=decoder_resnet)
    assert plain[2] == 1 and calls == 2  # each step runs the block again in the backward pass
    assert losses == plain[0]
    expected = lora_weights(plain[1].unet)
    for name, w in lora_weights(parts.unet).items():
        torch.testing.assert_close(w, expected[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("method_name, changes", [("textual_inversion", {}), ("custom_diffusion", {}),
                                                  ("lora", {"train_text_encoder": True})])
def test_gradient_checkpointing_engages_in_a_trained_text_encoder(examples, method_name, changes):
    """The text encoder recomputes its blocks too wherever gradients pass through it (it must be in training
    mode for transformers to checkpoint), and its trained weights get the same gradients."""
    off = train_method(examples, Hardware(), method_name, watch=last_text_layer, **changes)
    on = train_method(examples, Hardware(gradient_checkpointing=True), method_name, watch=last_text_layer, **changes)
    assert off[2] == 1 and on[2] == 2
    assert on[0] == pytest.approx(off[0], rel=1e-5)
    if method_name == "lora":
        trained = lora_weights(on[1].text_encoder)
        assert trained
        for name, w in lora_weights(off[1].text_encoder).items():
            torch.testing.assert_close(trained[name], w, rtol=0, atol=1e-6, msg=name)


def test_8bit_adam_trains_with_bitsandbytes_8bit_states(examples, monkeypatch):
    """DreamBooth, whose UNet weights are large enough for 8-bit moments (bitsandbytes keeps small ones 32-bit)."""
    pytest.importorskip("bitsandbytes", reason="requirements-gpu.txt, which `make test` installs")
    made = []
    make = trainer.make_optimizer
    monkeypatch.setattr(trainer, "make_optimizer", lambda *a, **k: made.append(make(*a, **k)) or made[-1])
    plain, _, _ = train_method(examples, Hardware(), "dreambooth")
    losses, _, _ = train_method(examples, Hardware(use_8bit_adam=True), "dreambooth")
    assert [type(optimizer).__name__ for optimizer in made] == ["AdamW", "AdamW8bit"]
    assert any(s.get("state1", torch.empty(0)).dtype == torch.uint8 for s in made[1].state.values())
    assert losses[0] == plain[0]  # same start; then the 8-bit moments take it elsewhere
    assert losses[1:] != plain[1:] and all(torch.isfinite(torch.tensor(losses)))


def test_8bit_adam_without_bitsandbytes_is_refused_naming_the_param(monkeypatch):
    monkeypatch.setattr(trainer, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"train.use_8bit_adam.*bitsandbytes.*pip install -r requirements-gpu.txt"):
        Hardware(use_8bit_adam=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 runs where CUDA is")
def test_fp16_without_cuda_is_refused_naming_the_param():
    with pytest.raises(ValueError, match="train.mixed_precision"):
        Hardware(mixed_precision="fp16")
