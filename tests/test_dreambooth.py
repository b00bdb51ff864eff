"""DreamBooth and prior preservation on the tiny model: a model folder opens as a pipeline even where its base
names a safety checker it lacks, and a hub model's base is its cached snapshot (round trips:
tests/test_roundtrip.py); class images are deterministic and readable as a training
set, the same for subjects of one class; a prior set names them only for prior preservation; the prior loss
is instance mean + weight x class mean and changes what training does."""

import hashlib
import json
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
import yaml
from diffusers import StableDiffusionPipeline
from PIL import Image

from dreamstudy.augment import read_training_set
from dreamstudy.methods import get_method
from dreamstudy.methods.dreambooth import INDEX, DreamBooth, base_folder
from dreamstudy.methods.trainer import Concept, Examples, Prior, prior_preservation_loss, train
from dreamstudy.models.loading import ModelLoadError, load_components, load_pipeline, resolve_pretrained
from dreamstudy.sampling.priors import generate_class_priors
from dreamstudy.trainset import read_prior_set
from stages import class_priors as class_priors_stage
from stages import prior_set as prior_set_stage
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
    train(method, schedule, parts, [Concept(examples, "sks", "dog", prior)], resolution=RESOLUTION, seed=0,
          log=lambda step, loss: losses.append(loss))
    return method, parts, losses


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_model_folder_leaves_out_what_the_study_never_loads(tmp_path):
    """A base whose model_index.json names a safety checker that is not there, as in a hub snapshot loaded
    without one: the model folder still opens with plain from_pretrained."""
    base = tmp_path / "base"
    shutil.copytree(resolve_pretrained("tiny"), base)
    index = json.loads((base / INDEX).read_text()) | {
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"], "requires_safety_checker": True}
    (base / INDEX).write_text(json.dumps(index))
    (tmp_path / "model").mkdir()
    DreamBooth().save(load_components(str(base)), tmp_path / "model")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "model")
    assert pipe.safety_checker is None and pipe.feature_extractor is None


def test_a_hub_models_base_folder_is_its_snapshot_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    repo = tmp_path / "models--someone--tiny-sd"
    shutil.copytree(resolve_pretrained("tiny"), repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    assert base_folder("someone/tiny-sd") == repo / "snapshots" / COMMIT
    with pytest.raises(ModelLoadError, match="'someone/absent'"):
        base_folder("someone/absent")


@pytest.fixture(scope="module")
def priors(tmp_path_factory):
    pipe = load_pipeline("tiny")
    root = tmp_path_factory.mktemp("priors")

    def make(name, class_name="dog", num_images=2):
        generate_class_priors(pipe, class_name, root / name, num_images=num_images, seed=0,
                              resolution=RESOLUTION, num_inference_steps=2, guidance_scale=7.5, batch_size=3)
        return root / name
    return make


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_class_priors_readable_and_deterministic(priors):
    for name, class_name in (("dog", "dog"), ("plush", "stuffed animal")):
        examples = read_training_set(priors(name, class_name))
        assert len(examples) == 2 and {e.caption for e in examples} == {f"a photo of a {class_name}"}
        assert all(Image.open(e.image).size == (RESOLUTION, RESOLUTION) for e in examples)
    images = [np.asarray(Image.open(priors("dog") / p)) for p in ("0000.png", "0001.png")]
    assert not np.array_equal(*images)
    assert not np.array_equal(images[0], np.asarray(Image.open(priors("plush", "stuffed animal") / "0000.png")))
    assert digests(priors("again")) == digests(priors("dog"))
    # the first images do not depend on how many are drawn
    assert digests(priors("one", num_images=1))["0000.png"] == digests(priors("dog"))["0000.png"]


def smoke_folder(tmp_path, **priors) -> Path:
    params = yaml.safe_load((ROOT / "params.smoke.yaml").read_text())
    params["model"] = {"pretrained": "tiny", "resolution": RESOLUTION}
    params["data"]["subjects"] = ["dog", "dog2", "cat"]
    params["multi"]["pairs"] = []  # its subjects would have to be the main study's
    params["priors"] |= {"num_inference_steps": 1, **priors}
    params["train"]["methods"] = ["lora", "dreambooth"]
    params["train"]["dreambooth"]["prior_preservation"] = params["priors"]["num_images"] > 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def test_class_priors_stage_gives_subjects_of_a_class_the_same_images(tmp_path, monkeypatch):
    monkeypatch.chdir(smoke_folder(tmp_path, num_images=1))
    for subject in ("dog", "dog2", "cat"):
        class_priors_stage.main(["--subject", subject])
    dog, dog2, cat = (digests(tmp_path / "data" / "class_priors" / s) for s in ("dog", "dog2", "cat"))
    assert dog == dog2 and set(dog) == {"0000.png", "captions.jsonl"} and dog != cat


def test_no_class_images_gives_an_empty_folder_and_loads_no_model(tmp_path, monkeypatch):
    monkeypatch.chdir(smoke_folder(tmp_path, num_images=0))
    monkeypatch.setattr("dreamstudy.sampling.priors.load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    class_priors_stage.main(["--subject", "dog"])
    assert (tmp_path / "data" / "class_priors" / "dog").is_dir()
    assert not any((tmp_path / "data" / "class_priors" / "dog").iterdir())


def test_prior_set_names_class_images_only_for_prior_preservation(tmp_path, monkeypatch):
    monkeypatch.chdir(smoke_folder(tmp_path, num_images=1, weight=0.5))
    class_priors_stage.main(["--subject", "dog"])
    for method in ("lora", "dreambooth"):
        prior_set_stage.main(["--subject", "dog", "--method", method])
    assert read_prior_set(tmp_path / "data/prior_sets/lora/dog.json") is None
    examples, weight = read_prior_set(tmp_path / "data/prior_sets/dreambooth/dog.json")
    assert weight == 0.5 and [e.caption for e in examples] == ["a photo of a dog"]
    # the record pins the images: a changed class image is refused, not trained on
    Image.new("RGB", (RESOLUTION, RESOLUTION)).save(tmp_path / "data/class_priors/dog/0000.png")
    with pytest.raises(ValueError, match="no longer holds the class images"):
        read_prior_set(tmp_path / "data/prior_sets/dreambooth/dog.json")


def test_prior_preservation_loss_is_instance_mean_plus_weighted_class_mean():
    per_example = torch.tensor([1.0, 3.0, 10.0, 20.0, 30.0])
    assert prior_preservation_loss(per_example, 2, 0.5).item() == pytest.approx(2.0 + 0.5 * 20.0)
    assert prior_preservation_loss(per_example[:2], 2, 0.5).item() == pytest.approx(2.0)


def test_training_with_prior_differs_from_without(examples, priors):
    class_images = Examples(read_training_set(priors("dog")))
    runs = [train_dreambooth(examples, prior=prior, steps=2)
            for prior in (None, Prior(class_images, weight=1.0), Prior(class_images, weight=0.0))]
    (_, plain, plain_losses), (_, with_prior, prior_losses), (_, unweighted, _) = runs
    assert plain_losses != prior_losses
    assert not torch.equal(plain.unet.conv_out.weight, with_prior.unet.conv_out.weight)
    # same class batches and draws, weight 0: only the class loss itself can make these differ
    assert not torch.equal(unweighted.unet.conv_out.weight, with_prior.unet.conv_out.weight)
