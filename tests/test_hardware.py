"""The GPU switches of `train` (mixed_precision, gradient_checkpointing, use_8bit_adam), as far as a CPU runs them.

No GPU is needed: bf16 autocast and gradient checkpointing run on the CPU too, so each switch is shown to
engage (and to leave what it must alone); fp16 and 8-bit Adam, which need CUDA, are shown to say so.
"""

import pytest
import torch

from dreamstudy.methods import get_method
from dreamstudy.methods.trainer import Hardware, train
from dreamstudy.models.loading import load_components
from tests.helpers import noise_examples, smoke_train_params

STEPS = 3


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return noise_examples(tmp_path_factory.mktemp("images"), 2, seed=5, size=32)


def train_lora(examples, hardware: Hardware, watch=None):
    """LoRA for STEPS steps; returns (losses, trainable weights, forward calls of `watch(unet)` per step)."""
    method, schedule = get_method("lora", smoke_train_params(lora={"steps": STEPS, "batch_size": 1}))
    parts = load_components("tiny")
    calls = []
    if watch is not None:
        watch(parts.unet).register_forward_hook(lambda *_: calls.append(1))
    losses = []
    train(method, schedule, parts, examples, identifier="sks", class_name="dog", resolution=32, seed=0,
          hardware=hardware, log=lambda step, loss: losses.append(loss))
    weights = {name: p.detach().clone() for name, p in parts.unet.named_parameters() if "lora" in name}
    return losses, weights, len(calls) / STEPS


@pytest.fixture(scope="module")
def plain(examples):
    return train_lora(examples, Hardware(), watch=decoder_resnet)


def decoder_resnet(unet):
    """The first layer of a decoder block, which gradients pass through on their way to the LoRA weights
    before it (the recomputation stops early: the block's own forward hooks do not fire again)."""
    return unet.up_blocks[0].resnets[0].norm1


def test_bf16_autocast_engages_and_keeps_float32_weights(examples, plain):
    losses, weights, _ = train_lora(examples, Hardware(mixed_precision="bf16"))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses != plain[0]  # the UNet ran in bf16: its losses are not the float32 ones
    assert losses[0] == pytest.approx(plain[0][0], rel=0.05)  # ... but close to them
    assert all(w.dtype == torch.float32 for w in weights.values())  # master weights stay float32


def test_gradient_checkpointing_recomputes_and_changes_nothing_else(examples, plain):
    losses, weights, calls = train_lora(examples, Hardware(gradient_checkpointing=True), watch=decoder_resnet)
    assert plain[2] == 1 and calls == 2  # each step runs the block again in the backward pass
    assert losses == plain[0]
    for name, w in weights.items():
        torch.testing.assert_close(w, plain[1][name], rtol=0, atol=1e-6, msg=name)


def test_8bit_adam_without_cuda_falls_back_to_adamw_and_says_so(examples, plain, capfd):
    losses, weights, _ = train_lora(examples, Hardware(use_8bit_adam=True))
    assert "train.use_8bit_adam" in capfd.readouterr().err
    assert losses == plain[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 runs where CUDA is")
def test_fp16_without_cuda_is_refused_naming_the_param():
    with pytest.raises(ValueError, match="train.mixed_precision"):
        Hardware(mixed_precision="fp16")
