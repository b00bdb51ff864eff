"""Metrics: known answers on synthetic images with random-init encoders (offline, no weights needed)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dreamstudy.data.dreambench import SUBJECTS
from dreamstudy.io import write_jsonl
from dreamstudy.metrics import study
from dreamstudy.metrics.encoders import EncoderLoadError, load_encoders
from dreamstudy.metrics.evaluate import PER_IMAGE_COLUMNS, aggregate, evaluate_samples
from dreamstudy.metrics.similarity import mean_pairwise_cosine, remove_identifier

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoders():
    # Random-init ViT-B/32 is ~150M parameters: build it once for the module.
    return load_encoders(pretrained=False, seed=0)


def noise(seed: int, size: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def solid(rgb: tuple[int, int, int], size: int = 64) -> Image.Image:
    return Image.new("RGB", (size, size), rgb)


def save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def sample_row(path: Path, prompt: str, subject: str = "dog", image_index: int = 0, prompt_index: int = 0,
               method: str = "lora", strategy: str = "none") -> dict:
    return {"subject": subject, "class": SUBJECTS[subject], "method": method, "strategy": strategy,
            "prompt_index": prompt_index, "prompt_kind": "recontextualization", "prompt": prompt,
            "identifier": "sks", "image_index": image_index, "seed": image_index, "file": path.name,
            "path": str(path)}


@pytest.mark.parametrize(("prompt", "expected"), [
    ("a sks dog in the jungle", "a dog in the jungle"),
    ("sks dog", "dog"),
    ("a sks, dog", "a , dog"),
    ("she asks a sksdog", "she asks a sksdog"),  # whole words only
])
def test_remove_identifier(prompt, expected):
    assert remove_identifier(prompt, "sks") == expected


def test_mean_pairwise_cosine_known_answer():
    a = torch.tensor([[2.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    assert mean_pairwise_cosine(a, b) == pytest.approx((1 + 0 + 2 ** -0.5) / 3)


def test_scores_known_answers(encoders, tmp_path):
    reference = save(noise(0), tmp_path / "ref" / "00.png")
    copy = save(noise(0), tmp_path / "gen" / "copy.png")
    other = save(solid((200, 30, 30)), tmp_path / "gen" / "other.png")
    samples = [
        sample_row(copy, "a sks dog in the jungle", image_index=0),
        sample_row(copy, "a dog in the jungle", image_index=1),
        sample_row(copy, "a sks dog on the moon", image_index=2),
        sample_row(other, "a sks dog in the jungle", image_index=3),
    ]
    per_image = evaluate_samples(samples, {"dog": [reference]}, encoders, batch_size=3)

    assert list(per_image.columns) == list(PER_IMAGE_COLUMNS)
    identical, same_prompt, other_prompt, different = per_image.to_dict("records")
    assert identical["dino"] == pytest.approx(1, abs=1e-5)
    assert identical["clip_i"] == pytest.approx(1, abs=1e-5)
    assert identical["clip_t"] == pytest.approx(same_prompt["clip_t"], abs=1e-6)  # identifier removed
    assert abs(identical["clip_t"] - other_prompt["clip_t"]) > 1e-3  # ... yet the text does count
    assert different["dino"] < 0.99 and different["clip_i"] < 0.99


def test_per_image_means_are_the_mean_over_all_pairs(encoders, tmp_path):
    references = [save(noise(seed), tmp_path / f"ref{seed}.png") for seed in (1, 2)]
    generated = [save(noise(3), tmp_path / "a.png"), save(solid((10, 90, 200)), tmp_path / "b.png")]
    samples = [sample_row(path, "a sks dog", image_index=i) for i, path in enumerate(generated)]
    per_image = evaluate_samples(samples, {"dog": references}, encoders, batch_size=1)

    def embed(paths, which):
        return getattr(encoders, f"embed_images_{which}")([Image.open(p) for p in paths])

    for column, which in (("dino", "dino"), ("clip_i", "clip")):
        expected = mean_pairwise_cosine(embed(generated, which), embed(references, which))
        assert per_image[column].mean() == pytest.approx(expected, abs=1e-5)


def test_batching_does_not_change_embeddings(encoders):
    images = [noise(seed) for seed in range(3)]
    one_by_one = encoders.embed_images_dino(images, batch_size=1)
    together = encoders.embed_images_dino(images, batch_size=3)
    assert torch.allclose(one_by_one, together, atol=1e-5)
    assert torch.allclose(together.norm(dim=1), torch.ones(3), atol=1e-5)


def test_missing_references_name_the_subject(encoders, tmp_path):
    image = save(noise(0), tmp_path / "x.png")
    with pytest.raises(ValueError, match="cat2"):
        evaluate_samples([sample_row(image, "a sks cat", subject="cat2")], {"dog": [image]}, encoders)


def test_aggregate_means_on_hand_made_frame():
    def image(method, strategy, subject, klass, prompt_index, dino, clip_i, clip_t):
        return {"subject": subject, "class": klass, "method": method, "strategy": strategy,
                "prompt_index": prompt_index, "prompt_kind": "property", "prompt": f"p{prompt_index}",
                "image_index": 0, "seed": 0, "file": "x.png", "dino": dino, "clip_i": clip_i, "clip_t": clip_t}

    per_image = pd.DataFrame([
        image("lora", "none", "dog", "dog", 0, 0.2, 0.5, 0.1),
        image("lora", "none", "dog", "dog", 0, 0.4, 0.7, 0.3),
        image("lora", "none", "dog", "dog", 1, 0.9, 0.9, 0.2),
        image("lora", "none", "can", "can", 0, 0.1, 0.3, 0.2),
        image("lora", "classic", "dog", "dog", 0, 0.6, 0.8, 0.4),
    ])
    per_prompt, per_subject, summary = aggregate(per_image)

    dog_prompt0 = per_prompt.query("strategy == 'none' and subject == 'dog' and prompt_index == 0").iloc[0]
    assert dog_prompt0.dino == pytest.approx(0.3) and dog_prompt0.clip_i == pytest.approx(0.6)
    assert dog_prompt0.n_images == 2 and dog_prompt0.prompt_kind == "property"
    assert len(per_prompt) == 4

    dog = per_subject.query("strategy == 'none' and subject == 'dog'").iloc[0]
    assert dog.dino == pytest.approx(0.5) and dog.n_images == 3 and bool(dog.live)
    assert not per_subject.query("subject == 'can'").iloc[0].live

    # Over ALL images, not a mean of subject means: (0.2 + 0.4 + 0.9 + 0.1) / 4, not (0.5 + 0.1) / 2.
    assert summary["lora"]["none"] == pytest.approx({"dino": 0.4, "clip_i": 0.6, "clip_t": 0.2, "n_images": 4})
    assert summary["lora"]["classic"]["n_images"] == 1
    json.dumps(summary)  # plain Python numbers, ready for summary.json


def test_random_encoders_are_deterministic(encoders):
    torch.manual_seed(12345)  # a global RNG state unlike the fixture's: only `seed` may matter
    again = load_encoders(pretrained=False, seed=0)
    images, texts = [noise(5)], ["a dog in the jungle"]
    assert torch.equal(encoders.embed_images_clip(images), again.embed_images_clip(images))
    assert torch.equal(encoders.embed_images_dino(images), again.embed_images_dino(images))
    assert torch.equal(encoders.embed_texts(texts), again.embed_texts(texts))
    assert again.describe() == {"pretrained": False, "clip": "ViT-B-32 (random init)",
                                "dino": "vit_small_patch16_224 (random init)"}


def test_pretrained_offline_error_says_what_failed_and_the_way_out(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast, no retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # and no cached weights
    with pytest.raises(EncoderLoadError, match=r"CLIP ViT-B-32 \(openai\)(.|\n)*eval.pretrained_encoders: false"):
        load_encoders(pretrained=True)


def run_stage(argv):
    spec = importlib.util.spec_from_file_location("evaluate_stage", REPO / "stages" / "evaluate.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    stage.main(argv)


def make_study_tree(root: Path) -> None:
    """data/dreambench with two subjects, and samples of two runs (one subject each)."""
    dataset = root / "data" / "dreambench"
    subjects = {"dog": [noise(10), noise(11)], "backpack": [solid((30, 160, 60))]}
    manifest = {"subjects": [
        {"name": name, "class": SUBJECTS[name], "kind": "live" if name == "dog" else "object",
         "files": [{"file": str(save(image, dataset / "images" / name / f"{i:02d}.png").relative_to(dataset))}
                   for i, image in enumerate(images)]}
        for name, images in subjects.items()]}
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    for strategy, subject in itertools.product(("none", "classic"), ("dog", "backpack")):
        folder = root / "results" / "samples" / "lora" / strategy / subject
        rows = []
        for index, image in enumerate([subjects[subject][0], noise(20)]):
            path = save(image, folder / f"{index:02d}.png")
            row = sample_row(path, f"a sks {subject} in the jungle", subject=subject, image_index=index,
                             strategy=strategy)
            rows.append({key: value for key, value in row.items() if key != "path"})
        write_jsonl(folder / "samples.jsonl", rows)


def stage_args(root: Path, monkeypatch) -> list[str]:
    """The stage reads and writes relative to the working directory, as DVC runs it."""
    monkeypatch.chdir(root)
    return ["--params", str(REPO / "params.smoke.yaml")]


def test_stage_writes_all_metrics(encoders, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "load_encoders", lambda *args, **kwargs: encoders)
    make_study_tree(tmp_path)
    run_stage(stage_args(tmp_path, monkeypatch))

    out = tmp_path / "results" / "metrics"
    assert sorted(p.name for p in out.iterdir()) == [
        "encoders.json", "per_image.csv", "per_prompt.csv", "per_subject.csv", "summary.json"]
    per_image = pd.read_csv(out / "per_image.csv")
    assert len(per_image) == 8 and list(per_image.columns) == list(PER_IMAGE_COLUMNS)
    first_of_dog = per_image.query("subject == 'dog' and image_index == 0").iloc[0]
    assert first_of_dog.clip_i < 1  # a copy of one of two distinct references
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["lora"]) == {"none", "classic"} and summary["lora"]["none"]["n_images"] == 4
    assert json.loads((out / "encoders.json").read_text()) == {
        "pretrained": False, "clip": "ViT-B-32 (random init)", "dino": "vit_small_patch16_224 (random init)"}


def test_stage_fails_clearly_before_loading_encoders(tmp_path, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("encoders loaded before the inputs were checked")

    monkeypatch.setattr(study, "load_encoders", no_load)
    make_study_tree(tmp_path)
    manifest_path = tmp_path / "data" / "dreambench" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["subjects"] = [s for s in manifest["subjects"] if s["name"] != "dog"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"no reference images for subject\(s\) \['dog'\]"):
        run_stage(stage_args(tmp_path, monkeypatch))

    shutil.rmtree(tmp_path / "results" / "samples")
    with pytest.raises(FileNotFoundError, match="no samples"):
        run_stage(stage_args(tmp_path, monkeypatch))
    assert not (tmp_path / "results" / "metrics").exists()
