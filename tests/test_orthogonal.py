"""Orthogonal Adaptation (dreamstudy.methods.orthogonal), on the tiny model: each subject's frozen A is its own
rows of one orthogonal basis per layer, only B trains; the plain sum of two subjects' adapters (orthogonal_sum,
through a stock pipeline's load_lora_weights) acts on an input in one subject's rows as that subject's adapter
alone, which plain LoRAs do not; a rank the model cannot hold for 30 subjects is refused."""

import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft.tuners.lora import LoraLayer

from dreamstudy.augment.dataset import instance_caption
from dreamstudy.methods import get_method
from dreamstudy.methods.lora import ADAPTER, WEIGHTS
from dreamstudy.methods.orthogonal import SLOTS
from dreamstudy.methods.trainer import Concept, train
from dreamstudy.models.loading import load_components, load_pipeline, resolve_pretrained
from dreamstudy.multi.merge import merge_models
from tests.helpers import noise_examples, smoke_train_params

DOG, BACKPACK = "mth", "sks"  # the smoke params' identifiers of dog and backpack
LAYER = "mid_block.attentions.0.transformer_blocks.0.attn1.to_q"  # 64 input features


def method(**section):
    return get_method("orthogonal", smoke_train_params(orthogonal=section))


def down(parts, layer=LAYER) -> torch.Tensor:
    return parts.unet.get_submodule(layer).lora_A[ADAPTER].weight.detach().clone()


def test_each_subject_reads_its_own_orthonormal_rows_and_only_b_trains():
    (dog, _), parts = method(), load_components("tiny")
    trained = dog.prepare(parts, [DOG], ["dog"])
    layers = [m for m in parts.unet.modules() if isinstance(m, LoraLayer)]
    assert {id(p) for p in trained} == {id(m.lora_B[ADAPTER].weight) for m in layers}
    assert not any(m.lora_A[ADAPTER].weight.requires_grad for m in layers)
    other = load_components("tiny")
    dog.prepare(other, [BACKPACK], ["backpack"])
    a_dog, a_backpack = down(parts), down(other)
    torch.testing.assert_close(a_dog @ a_dog.T, torch.eye(1), rtol=0, atol=1e-6)
    assert (a_dog @ a_backpack.T).abs().max() < 1e-6 and (a_dog - a_backpack).abs().max() > 0.1
    joint = load_components("tiny")
    dog.prepare(joint, [DOG, BACKPACK], ["dog", "backpack"])  # trained together: both subjects' rows
    torch.testing.assert_close(down(joint), torch.cat([a_dog, a_backpack]), rtol=0, atol=0)
    assert SLOTS["dog"] != SLOTS["backpack"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """dog and backpack, each trained 3 steps on noise images with a high learning rate, saved."""
    root = tmp_path_factory.mktemp("orthogonal")
    folders = {}
    for number, (token, subject, class_name) in enumerate(((DOG, "dog", "dog"), (BACKPACK, "backpack", "backpack"))):
        (root / "images" / subject).mkdir(parents=True)
        examples = noise_examples(root / "images" / subject, 2, seed=number,
                                  caption=instance_caption(token, class_name))
        oa, schedule = method(lr=5e-2, steps=3)
        parts = load_components("tiny")
        train(oa, schedule, parts, [Concept(examples, token, class_name)], resolution=32, seed=0)
        folders[subject] = root / subject
        folders[subject].mkdir()
        oa.save(parts, folders[subject])
    return folders


def stock(*folders) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(resolve_pretrained("tiny"))
    for folder in folders:
        pipe.load_lora_weights(folder, weight_name=WEIGHTS)
    return pipe


def layer_output(pipe, x) -> torch.Tensor:
    with torch.no_grad():
        return pipe.unet.get_submodule(LAYER)(x)


def test_training_keeps_a_and_the_summed_adapters_keep_each_subject_on_its_rows(trained, tmp_path):
    (oa, _), reference = method(), load_components("tiny")
    oa.prepare(reference, [DOG], ["dog"])
    dog = stock(trained["dog"])
    torch.testing.assert_close(down_of(dog), down(reference), rtol=0, atol=0)  # A did not move in training
    merge_models("orthogonal_sum", load_pipeline("tiny"), [(trained["dog"], "dog"), (trained["backpack"], "backpack")],
                 tmp_path)
    merged, backpack = stock(tmp_path), stock(trained["backpack"])
    rows = torch.randn(3, 1, generator=torch.Generator().manual_seed(0))
    on_dog = rows @ down(reference)  # inputs in the dog's rows
    base = layer_output(stock(), on_dog)
    assert (layer_output(dog, on_dog) - base).abs().max() > 1e-3  # the dog's adapter does act there
    torch.testing.assert_close(layer_output(merged, on_dog), layer_output(dog, on_dog), rtol=0, atol=1e-6)
    torch.testing.assert_close(layer_output(backpack, on_dog), base, rtol=0, atol=1e-6)  # the backpack's does not


def down_of(pipe) -> torch.Tensor:
    layer = pipe.unet.get_submodule(LAYER)
    return next(iter(layer.lora_A.values())).weight.detach()


def test_plain_loras_summed_do_not_keep_a_subject_on_its_rows(trained, tmp_path):
    """What the test above would catch: LoRA's random A's overlap, so the sum moves the dog's inputs."""
    lora, _ = get_method("lora", smoke_train_params(lora={"rank": 1, "alpha": 1.0}))
    folders = []
    for seed in (0, 1):
        parts = load_components("tiny")
        torch.manual_seed(seed)
        for p in lora.prepare(parts, [DOG], ["dog"]):
            torch.nn.init.normal_(p, std=0.5)
        folders.append(tmp_path / str(seed))
        folders[-1].mkdir()
        lora.save(parts, folders[-1])
    one, both = stock(folders[0]), stock(*folders)
    x = torch.randn(3, 1) @ down_of(one)
    assert (layer_output(both, x) - layer_output(one, x)).abs().max() > 1e-3


def test_a_rank_the_model_cannot_hold_for_every_subject_is_refused():
    oa, _ = method(rank=2)  # the tiny model's narrowest attention input is 32 < 30 x 2
    with pytest.raises(ValueError, match=r"train.orthogonal.rank 2: 30 subjects x 2 rows exceed the 32 input "
                                         r"features of .*; at most rank 1"):
        oa.prepare(load_components("tiny"), [DOG], ["dog"])
    with pytest.raises(ValueError, match="'zzq' is no identifier of train.identifiers"):
        oa.check(None, "zzq")
