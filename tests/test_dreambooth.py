"""DreamBooth and prior preservation on the tiny model: the fine-tuned UNet (and text encoder) load into a
stock pipeline and change its output; class images land one folder per class, deterministic and readable
as a training set; the prior loss is instance mean + weight x class mean and changes what training does."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from safetensors import safe_open

from dreamstudy.augment import read_training_set
from dreamstudy.methods import get_method
from dreamstudy.methods.trainer import Examples, Prior, prior_preservation_loss, train
from dreamstudy.models.loading import load_components, load_pipeline, resolve_pretrained
from dreamstudy.sampling.priors import generate_class_priors
from stages import class_priors as class_priors_stage
from dreamstudy.data.dreambench import SUBJECTS
from tests.helpers import ROOT, noise_examples, smoke_train_params

RESOLUTION = 32


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return noise_examples(tmp_path_factory.mktemp("images"), 2, seed=0)


def train_dreambooth(examples, prior=None, steps=3, **section):
    method, schedule = get_method("dreambooth", smoke_train_params(
        dreambooth={"lr": 1e-3, "steps": steps, "batch_size": 2, **section}))
    parts = load_components("tiny")
    losses = []
    train(method, schedule, parts, examples, identifier="sks", class_name="dog", resolution=RESOLUTION, seed=0,
          prior=prior, log=lambda step, loss: losses.append(loss))
    return method, parts, losses


def saved(method, parts, folder: Path) -> Path:
    folder.mkdir()
    method.save(parts, folder)
    return folder


@pytest.fixture(scope="module")
def unet_only(examples, tmp_path_factory):
    method, parts, _ = train_dreambooth(examples)
    return method, parts, saved(method, parts, tmp_path_factory.mktemp("dreambooth") / "out")


def render(pipe, seed=0):
    pipe.set_progress_bar_config(disable=True)
    return pipe("a photo of sks dog", height=RESOLUTION, width=RESOLUTION, num_inference_steps=2,
                generator=torch.Generator().manual_seed(seed), output_type="np").images[0]


def dtypes(safetensors_file: Path) -> set[torch.dtype]:
    with safe_open(safetensors_file, "pt") as f:
        return {f.get_tensor(key).dtype for key in f.keys()}


def test_unet_loads_into_a_stock_pipeline_and_changes_output(unet_only):
    method, parts, folder = unet_only
    assert sorted(p.name for p in folder.iterdir()) == ["unet"]  # no text encoder when it was not trained
    assert dtypes(folder / "unet" / "diffusion_pytorch_model.safetensors") == {torch.float16}
    assert parts.unet.dtype == torch.float32  # saving in float16 left the trained model alone
    base = StableDiffusionPipeline.from_pretrained(resolve_pretrained("tiny"))
    stock = StableDiffusionPipeline.from_pretrained(
        resolve_pretrained("tiny"), unet=UNet2DConditionModel.from_pretrained(folder / "unet"))
    ours = load_pipeline("tiny")
    method.load_into(ours, folder)
    assert ours.unet.dtype == torch.float32
    assert np.abs(render(stock) - render(base)).max() > 1e-3
    assert np.array_equal(render(ours), render(stock))


def test_load_into_casts_to_the_pipelines_dtype(unet_only):
    method, _, folder = unet_only
    pipe = load_pipeline("tiny", torch_dtype=torch.bfloat16)
    method.load_into(pipe, folder)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.unet.device == pipe.device


def test_trained_text_encoder_is_saved_and_loaded(examples, tmp_path):
    method, parts, _ = train_dreambooth(examples, train_text_encoder=True)
    folder = saved(method, parts, tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == ["text_encoder", "unet"]
    assert dtypes(folder / "text_encoder" / "model.safetensors") == {torch.float16}
    pipe = load_pipeline("tiny")
    base = pipe.text_encoder.state_dict()
    method.load_into(pipe, folder)
    loaded, trained = pipe.text_encoder.state_dict(), parts.text_encoder.state_dict()
    assert pipe.text_encoder.dtype == torch.float32
    half = {k: v.half().float() for k, v in trained.items()}  # what the float16 files hold
    assert all(torch.equal(loaded[k], half[k]) for k in trained)
    assert any(not torch.equal(half[k], base[k].half().float()) for k in base)  # and training changed it


@pytest.fixture(scope="module")
def priors(tmp_path_factory):
    pipe = load_pipeline("tiny")
    root = tmp_path_factory.mktemp("priors")

    def make(name, classes=("dog", "stuffed animal", "dog"), num_images=2):
        generate_class_priors(pipe, list(classes), root / name, num_images=num_images, seed=0,
                              resolution=RESOLUTION, num_inference_steps=2, guidance_scale=7.5, batch_size=3)
        return root / name
    return make


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_class_priors_one_folder_per_class_readable_and_deterministic(priors):
    root = priors("a")
    assert sorted(p.name for p in root.iterdir()) == ["dog", "stuffed_animal"]
    for folder, caption in (("dog", "a photo of a dog"), ("stuffed_animal", "a photo of a stuffed animal")):
        examples = read_training_set(root / folder)
        assert len(examples) == 2 and {e.caption for e in examples} == {caption}
        assert all(Image.open(e.image).size == (RESOLUTION, RESOLUTION) for e in examples)
    images = [np.asarray(Image.open(root / p)) for p in ("dog/0000.png", "dog/0001.png", "stuffed_animal/0000.png")]
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[0], images[2])
    assert digests(priors("again")) == digests(root)
    # a class's images depend on their own seeds, not on the other classes of the study
    assert digests(priors("dog_only", classes=["dog"]))["dog/0000.png"] == digests(root)["dog/0000.png"]


def test_no_class_images_gives_an_empty_folder(priors):
    root = priors("none", num_images=0)
    assert root.is_dir() and not any(root.iterdir())


def test_class_priors_stage_covers_each_class_of_the_study_once(tmp_path, monkeypatch):
    params = yaml.safe_load((ROOT / "params.smoke.yaml").read_text())
    params["data"]["subjects"] = sorted(SUBJECTS)  # all 30, of 15 classes
    params["model"] = {"pretrained": "tiny", "resolution": RESOLUTION}
    params["priors"] |= {"num_images": 1, "num_inference_steps": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    class_priors_stage.main([])
    folders = sorted(p.name for p in (tmp_path / "data" / "class_priors").iterdir())
    assert len(params["data"]["subjects"]) == 30 and len(folders) == 15
    assert {"dog", "stuffed_animal", "toy"} <= set(folders)


def test_prior_preservation_loss_is_instance_mean_plus_weighted_class_mean():
    per_example = torch.tensor([1.0, 3.0, 10.0, 20.0, 30.0])
    assert prior_preservation_loss(per_example, 2, 0.5).item() == pytest.approx(2.0 + 0.5 * 20.0)
    assert prior_preservation_loss(per_example[:2], 2, 0.5).item() == pytest.approx(2.0)


def test_training_with_prior_differs_from_without(examples, priors):
    class_images = Examples(read_training_set(priors("a") / "dog"))
    runs = [train_dreambooth(examples, prior=prior, steps=2)
            for prior in (None, Prior(class_images, weight=1.0), Prior(class_images, weight=0.0))]
    (_, plain, plain_losses), (_, with_prior, prior_losses), (_, unweighted, _) = runs
    assert plain_losses != prior_losses
    assert not torch.equal(plain.unet.conv_out.weight, with_prior.unet.conv_out.weight)
    # same class batches and draws, weight 0: only the class loss itself can make these differ
    assert not torch.equal(unweighted.unet.conv_out.weight, with_prior.unet.conv_out.weight)
