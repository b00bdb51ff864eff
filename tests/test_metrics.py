"""Metrics: known answers on synthetic images with random-init encoders (offline, no weights needed)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from dreamstudy.data.dreambench import SUBJECTS
from dreamstudy.io import write_jsonl
from dreamstudy.layout import Layout
from dreamstudy.metrics import run, study
from dreamstudy.metrics.encoders import EncoderLoadError, load_encoders
from dreamstudy.metrics.evaluate import evaluate_samples
from dreamstudy.metrics.similarity import mean_pairwise_cosine, remove_identifier
from dreamstudy.metrics.tables import IMAGE_SCORE_COLUMNS, PER_IMAGE_COLUMNS, aggregate, breakdown, with_memorized
from dreamstudy.sampling.protocol import class_images

REPO = Path(__file__).resolve().parents[1]
ENCODERS_JSON = {"pretrained": False, "clip": "ViT-B-32 (random init)", "dino": "vit_small_patch16_224 (random init)",
                 "lpips": "alex (random backbone)"}


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

    assert list(per_image.columns) == list(IMAGE_SCORE_COLUMNS)
    identical, same_prompt, other_prompt, different = per_image.to_dict("records")
    assert identical["dino"] == pytest.approx(1, abs=1e-5)
    assert identical["clip_i"] == pytest.approx(1, abs=1e-5)
    assert identical["clip_t"] == pytest.approx(same_prompt["clip_t"], abs=1e-6)  # identifier removed
    assert abs(identical["clip_t"] - other_prompt["clip_t"]) > 1e-3  # ... yet the text does count
    assert different["dino"] < 0.99 and different["clip_i"] < 0.99
    assert identical["live"] and identical["mem_dino"] == pytest.approx(1, abs=1e-5)


def test_copy_of_a_training_image_is_memorized(encoders, tmp_path):
    # Two distinct training photos: a copy of one is far from their mean, but at its nearest it is identical.
    references = [save(noise(0), tmp_path / "ref0.png"), save(solid((30, 160, 60)), tmp_path / "ref1.png")]
    copy = save(noise(0), tmp_path / "copy.png")
    fresh = save(solid((200, 30, 30)), tmp_path / "fresh.png")
    samples = [sample_row(copy, "a sks dog", image_index=0), sample_row(fresh, "a sks dog", image_index=1)]
    per_image = with_memorized(evaluate_samples(samples, {"dog": references}, encoders), threshold=0.9)

    copied, new = per_image.to_dict("records")
    assert copied["mem_dino"] == pytest.approx(1, abs=1e-5) and copied["mem_clip_i"] == pytest.approx(1, abs=1e-5)
    assert copied["dino"] < 0.9 and copied["memorized"]  # the mean would miss the copy; the nearest does not
    assert new["mem_dino"] < 0.9 and not new["memorized"]
    assert new["mem_dino"] >= new["dino"] and new["mem_clip_i"] >= new["clip_i"]  # max >= mean


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


def hand_image(method, strategy, subject, prompt_index, dino, clip_i, clip_t, mem_dino=0.5, kind="property"):
    return {"subject": subject, "class": SUBJECTS[subject], "method": method, "strategy": strategy,
            "prompt_index": prompt_index, "prompt_kind": kind, "prompt": f"p{prompt_index}",
            "image_index": 0, "seed": 0, "file": "x.png", "dino": dino, "clip_i": clip_i, "clip_t": clip_t,
            "live": SUBJECTS[subject] == "dog", "mem_dino": mem_dino, "mem_clip_i": mem_dino,
            "memorized": mem_dino > 0.9}


HAND_MADE = pd.DataFrame([
    hand_image("lora", "none", "dog", 0, 0.2, 0.5, 0.1, mem_dino=0.95),
    hand_image("lora", "none", "dog", 0, 0.4, 0.7, 0.3),
    hand_image("lora", "none", "dog", 1, 0.9, 0.9, 0.2, kind="recontextualization"),
    hand_image("lora", "none", "can", 0, 0.1, 0.3, 0.2),
    hand_image("lora", "classic", "dog", 0, 0.6, 0.8, 0.4),
])


def test_aggregate_means_on_hand_made_frame():
    div = pd.DataFrame({"method": "lora", "strategy": ["none", "none", "none", "classic"],
                        "subject": ["dog", "dog", "can", "dog"], "prompt_index": [0, 1, 0, 0],
                        "div": [0.2, 0.4, np.nan, 0.3]})
    pres = pd.DataFrame({"method": ["lora"], "strategy": ["none"], "subject": ["dog"],
                         "pres": [0.6], "pres_base": [0.5]})
    per_prompt, per_subject, summary = aggregate(HAND_MADE, div, pres)

    dog_prompt0 = per_prompt.query("strategy == 'none' and subject == 'dog' and prompt_index == 0").iloc[0]
    assert dog_prompt0.dino == pytest.approx(0.3) and dog_prompt0.clip_i == pytest.approx(0.6)
    assert dog_prompt0.n_images == 2 and dog_prompt0.prompt_kind == "property"
    assert dog_prompt0.memorized == pytest.approx(0.5) and dog_prompt0["div"] == pytest.approx(0.2)
    assert len(per_prompt) == 4 and per_prompt.columns[-1] == "n_images"

    dog = per_subject.query("strategy == 'none' and subject == 'dog'").iloc[0]
    assert dog.dino == pytest.approx(0.5) and dog.n_images == 3 and bool(dog.live)
    assert dog["div"] == pytest.approx(0.3) and dog.memorized == pytest.approx(1 / 3)
    assert (dog.pres, dog.pres_base) == (pytest.approx(0.6), pytest.approx(0.5))
    can = per_subject.query("subject == 'can'").iloc[0]
    assert not can.live and np.isnan(can["div"]) and np.isnan(can.pres)  # no pair of images, no PRES images

    # Over ALL images, not a mean of subject means: (0.2 + 0.4 + 0.9 + 0.1) / 4, not (0.5 + 0.1) / 2.
    assert summary["lora"]["none"] == pytest.approx({
        "dino": 0.4, "clip_i": 0.6, "clip_t": 0.2, "div": 0.3, "pres": 0.6, "pres_base": 0.5,
        "memorized": 0.25, "n_images": 4})
    assert summary["lora"]["classic"]["n_images"] == 1 and np.isnan(summary["lora"]["classic"]["pres"])
    json.dumps(study.json_numbers(summary), allow_nan=False)  # plain numbers and nulls for summary.json


def test_aggregate_without_div_and_pres_gives_nan_columns():
    per_prompt, per_subject, summary = aggregate(HAND_MADE)
    assert per_prompt["div"].isna().all() and per_subject[["div", "pres", "pres_base"]].isna().all().all()
    assert study.json_numbers(summary)["lora"]["none"]["pres"] is None


def test_breakdown_by_prompt_kind_and_live():
    table = breakdown(HAND_MADE)
    assert list(table.columns) == ["method", "strategy", "by", "group", "metric", "value"]
    value = table.set_index(["strategy", "by", "group", "metric"])["value"]
    assert value["none", "prompt_kind", "property", "dino"] == pytest.approx((0.2 + 0.4 + 0.1) / 3)
    assert value["none", "prompt_kind", "recontextualization", "dino"] == pytest.approx(0.9)
    assert value["none", "live", "live", "clip_t"] == pytest.approx(0.2)  # (0.1 + 0.3 + 0.2) / 3
    assert value["none", "live", "object", "memorized"] == 0
    assert value["none", "live", "live", "memorized"] == pytest.approx(1 / 3)
    assert set(table["by"]) == {"prompt_kind", "live"} and set(table["metric"]) == {"dino", "clip_i", "clip_t",
                                                                                    "memorized"}


def test_random_encoders_are_deterministic(encoders):
    torch.manual_seed(12345)  # a global RNG state unlike the fixture's: only `seed` may matter
    again = load_encoders(pretrained=False, seed=0)
    images, texts = [noise(5)], ["a dog in the jungle"]
    assert torch.equal(encoders.embed_images_clip(images), again.embed_images_clip(images))
    assert torch.equal(encoders.embed_images_dino(images), again.embed_images_dino(images))
    assert torch.equal(encoders.embed_texts(texts), again.embed_texts(texts))
    trunk = [(key, value) for key, value in encoders.lpips.state_dict().items() if key.startswith("net.")]
    assert all(torch.equal(value, again.lpips.state_dict()[key]) for key, value in trunk)
    other_seed = load_encoders(pretrained=False, seed=1).lpips.state_dict()
    assert not torch.equal(trunk[0][1], other_seed[trunk[0][0]])  # the seed does decide the random trunk
    assert again.describe() == ENCODERS_JSON


def test_pretrained_offline_error_says_what_failed_and_the_way_out(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast, no retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # and no cached weights
    with pytest.raises(EncoderLoadError, match=r"CLIP ViT-B-32 \(openai\)(.|\n)*eval.pretrained_encoders: false"):
        load_encoders(pretrained=True)


def run_stage(name: str, argv: list[str]) -> None:
    spec = importlib.util.spec_from_file_location(f"{name}_stage", REPO / "stages" / f"{name}.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    stage.main(argv)


RUNS = list(itertools.product(["lora"], ["none", "classic"], ["dog", "backpack"]))  # params.smoke.yaml's grid, LoRA only


def make_study_tree(root: Path) -> None:
    """data/dreambench with two subjects, samples of two runs each (one prompt, two images: a copy of the
    subject's first photo and a red square), PRES images, and the dog's class images (none for backpack)."""
    dataset = root / "data" / "dreambench"
    subjects = {"dog": [noise(10), noise(11)], "backpack": [solid((30, 160, 60))]}
    manifest = {"subjects": [
        {"name": name, "class": SUBJECTS[name], "kind": "live" if name == "dog" else "object",
         "files": [{"file": str(save(image, dataset / "images" / name / f"{i:02d}.png").relative_to(dataset))}
                   for i, image in enumerate(images)]}
        for name, images in subjects.items()]}
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    class_looks = [solid((90, 90, 90)), noise(30)]  # base model's and fine-tuned models' class images alike
    for spec, image in zip(class_images("dog", 2, seed=0), class_looks):  # seed: params.smoke.yaml's
        save(image, root / Layout().class_priors("dog") / spec.file)
    for method, strategy, subject in RUNS:
        folder = root / Layout().samples(method, strategy, subject)
        rows = []
        for index, image in enumerate([subjects[subject][0], solid((200, 30, 30))]):
            path = save(image, folder / f"{index:02d}.png")
            row = sample_row(path, f"a sks {subject} in the jungle", subject=subject, image_index=index,
                             method=method, strategy=strategy)
            rows.append({key: value for key, value in row.items() if key != "path"})
        write_jsonl(folder / "samples.jsonl", rows)
        pres_rows = []
        for spec, image in zip(class_images(SUBJECTS[subject], 2, seed=0), class_looks):
            save(image, folder / "pres" / spec.file)
            pres_rows.append({"prompt": spec.prompt, "seed": spec.seed, "file": f"pres/{spec.file}",
                              "class": SUBJECTS[subject], "method": method, "strategy": strategy})
        write_jsonl(folder / "pres.jsonl", pres_rows)


def runs_params() -> dict:
    """params.smoke.yaml with the methods of RUNS alone (no ED-LoRA, so no Mix-of-Show merge)."""
    params = yaml.safe_load((REPO / "params.smoke.yaml").read_text())
    params["train"]["methods"] = sorted({method for method, _, _ in RUNS})
    params["train"]["baseline_methods"] = []
    params["multi"]["merges"]["edlora"] = []
    params["multi"]["regional"] = []
    return params


def params_args(root: Path, monkeypatch, **eval_params) -> list[str]:
    """The stages read and write relative to the working directory, as DVC runs them; params.smoke.yaml
    with the methods of RUNS and `eval_params` changed."""
    monkeypatch.chdir(root)
    params = runs_params()
    params["eval"].update(eval_params)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return ["--params", str(root / "params.yaml")]


def run_args(method: str, strategy: str, subject: str) -> list[str]:
    return ["--method", method, "--strategy", strategy, "--subject", subject]


@pytest.fixture(scope="module")
def evaluated(encoders, tmp_path_factory) -> Path:
    """The study tree with every run evaluated by the evaluate stage (score folders, no metrics yet)."""
    root = tmp_path_factory.mktemp("study")
    make_study_tree(root)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(run, "load_encoders", lambda *args, **kwargs: encoders)
        monkeypatch.setenv("DREAMSTUDY_CACHE", str(root / "cache"))
        argv = params_args(root, monkeypatch)
        for cell in RUNS:
            run_stage("evaluate", argv + run_args(*cell))
    return root


@pytest.fixture
def study_tree(evaluated, tmp_path) -> Path:
    """A copy of the evaluated tree that a test may change."""
    shutil.copytree(evaluated, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_evaluate_writes_the_run_scores_without_the_threshold(evaluated):
    folder = evaluated / Layout().scores("lora", "none", "dog")
    assert sorted(path.name for path in folder.iterdir()) == [
        "div.csv", "encoders.json", "per_image.csv", "pres.csv", "real_images.csv"]
    per_image = pd.read_csv(folder / "per_image.csv")
    assert list(per_image.columns) == list(IMAGE_SCORE_COLUMNS)  # no `memorized`: the gather decides it
    assert len(per_image) == 2 and (per_image.strategy == "none").all() and (per_image.subject == "dog").all()
    assert len(pd.read_csv(folder / "div.csv")) == 1 and len(pd.read_csv(folder / "real_images.csv")) == 1
    assert pd.read_csv(folder / "pres.csv")["n_pres"].tolist() == [2]
    assert json.loads((folder / "encoders.json").read_text()) == ENCODERS_JSON
    assert list((evaluated / "cache" / "embeddings").rglob("*.safetensors"))  # reference embeddings kept


def test_a_run_scores_the_same_whatever_else_was_evaluated(evaluated, encoders, tmp_path, monkeypatch):
    """Per-run results depend on the run's inputs alone: evaluated first in an empty embeddings cache, or last
    after every other run (its real photos and class images read from the cache), the files are equal."""
    monkeypatch.setattr(run, "load_encoders", lambda *args, **kwargs: encoders)
    monkeypatch.setenv("DREAMSTUDY_CACHE", str(tmp_path / "empty_cache"))
    cell = ("lora", "classic", "dog")
    for folder in ("data", Layout().samples(*cell)):
        shutil.copytree(evaluated / folder, tmp_path / folder)
    run_stage("evaluate", params_args(tmp_path, monkeypatch) + run_args(*cell))
    alone, among_all = (root / Layout().scores(*cell) for root in (tmp_path, evaluated))
    for name in ("per_image.csv", "div.csv", "pres.csv", "real_images.csv", "encoders.json"):
        assert (alone / name).read_bytes() == (among_all / name).read_bytes(), name


def test_gather_writes_all_metrics(study_tree, monkeypatch):
    run_stage("gather", params_args(study_tree, monkeypatch))

    out = study_tree / "results" / "metrics"
    assert sorted(p.name for p in out.iterdir()) == [
        "breakdown.csv", "encoders.json", "headline.json", "per_image.csv", "per_prompt.csv", "per_subject.csv",
        "real_images.csv", "stats.csv", "summary.json", "tests.csv"]
    per_image = pd.read_csv(out / "per_image.csv")
    assert len(per_image) == 8 and list(per_image.columns) == list(PER_IMAGE_COLUMNS)
    assert list(per_image[["strategy", "subject"]].drop_duplicates().itertuples(index=False, name=None)) == [
        (strategy, subject) for _, strategy, subject in RUNS]  # grid order
    first_of_dog = per_image.query("subject == 'dog' and image_index == 0").iloc[0]
    assert first_of_dog.clip_i < 1  # a copy of one of two distinct references ...
    assert first_of_dog.mem_dino == pytest.approx(1, abs=1e-5) and first_of_dog.memorized  # ... is memorized
    assert per_image["live"].tolist() == [name == "dog" for name in per_image["subject"]]

    per_prompt = pd.read_csv(out / "per_prompt.csv")
    assert (per_prompt["div"] > 0).all()  # two different images per prompt
    per_subject = pd.read_csv(out / "per_subject.csv").set_index(["strategy", "subject"])
    assert per_subject["pres"].notna().all()
    assert per_subject["pres_base"].notna().tolist() == [s == "dog" for _, s in per_subject.index]
    # the same PRES images as the base model's class images of the same seeds: no drift from the prior
    assert per_subject.loc[("none", "dog"), "pres"] == pytest.approx(per_subject.loc[("none", "dog"), "pres_base"])

    real = pd.read_csv(out / "real_images.csv").set_index("subject")
    assert list(real.index) == ["backpack", "dog"]
    assert real.loc["dog", "dino"] < 1 and np.isnan(real.loc["backpack", "dino"])  # one photo: no pair
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["lora"]) == {"none", "classic"} and summary["lora"]["none"]["n_images"] == 4
    assert summary["lora"]["none"]["memorized"] == 0.5
    assert summary["real_images"] == pytest.approx(real.loc["dog", ["dino", "clip_i"]].to_dict())  # NaN skipped
    assert json.loads((out / "headline.json").read_text()) == {
        "lora": {strategy: {score: round(summary["lora"][strategy][score], 3) for score in ("dino", "clip_t")}
                 for strategy in ("classic", "none")}}
    assert json.loads((out / "encoders.json").read_text()) == ENCODERS_JSON

    stats = pd.read_csv(out / "stats.csv")
    assert len(stats) == 2 * 6 and (stats["n_subjects"] == 2).all()
    assert (stats.ci_low <= stats["mean"] + 1e-12).all() and (stats["mean"] <= stats.ci_high + 1e-12).all()
    tests = pd.read_csv(out / "tests.csv")
    assert set(tests.strategy) == {"classic"} and len(tests) == 6
    # classic's images are none's: every difference is 0, so no p value, and a note that says why
    assert tests.p_value.isna().all() and (tests.note == "all differences are 0").all() and not tests.significant.any()
    assert set(pd.read_csv(out / "breakdown.csv")["by"]) == {"prompt_kind", "live"}


def test_gather_reads_back_exactly_what_evaluate_computed(study_tree, encoders, monkeypatch):
    """The score files are a lossless hand-over: the study's tables from the files equal those from the
    scores in memory, to the last bit."""
    monkeypatch.chdir(study_tree)
    layout = Layout()
    in_memory = [run.evaluate_run("data/dreambench", layout.samples(*cell), layout.class_priors(cell[2]), cell,
                                  pretrained=False, batch_size=8, seed=0, cache_root="cache", encoders=encoders)
                 for cell in RUNS]
    settings = {"seed": 0, "memorization_threshold": 0.9, "bootstrap_samples": 200, "confidence": 0.95, "alpha": 0.05}
    expected = study.gather(in_memory, **settings)
    actual = study.gather(study.read_study_scores(layout, RUNS), **settings)
    for name in study.TABLES:
        pd.testing.assert_frame_equal(getattr(actual, name), getattr(expected, name), check_exact=True)
    assert actual.summary == expected.summary and actual.headline == expected.headline


def gathered(root: Path, monkeypatch, **eval_params) -> dict[str, pd.DataFrame]:
    run_stage("gather", params_args(root, monkeypatch, **eval_params))
    return {name: pd.read_csv(root / "results" / "metrics" / f"{name}.csv") for name in ("per_image", "stats")}


def test_gather_applies_the_memorization_threshold(study_tree, monkeypatch):
    """eval.memorization_threshold acts at the gather, on the stored scores: changing it re-embeds nothing."""
    scores = study_tree / Layout().scores("lora", "none", "dog") / "per_image.csv"
    table = pd.read_csv(scores)
    table.loc[0, "mem_dino"] = 0.95
    table.to_csv(scores, index=False)
    for threshold, copied in ((0.9, True), (0.97, False)):
        per_image = gathered(study_tree, monkeypatch, memorization_threshold=threshold)["per_image"]
        assert per_image.memorized.tolist() == (per_image.mem_dino > threshold).tolist()
        assert per_image.memorized[0] == copied


def test_bootstrap_settings_change_the_intervals(study_tree, monkeypatch):
    def width(**eval_params) -> float:
        stats = gathered(study_tree, monkeypatch, **eval_params)["stats"].set_index(["strategy", "metric"])
        return (stats.ci_high - stats.ci_low)["none", "dino"]

    wide = width(confidence=0.95)
    assert 0 < width(confidence=0.5) < wide
    assert wide > 0 and width(bootstrap_samples=1) == 0  # one replicate: nothing to spread


def test_gather_runs_without_torch(study_tree):
    """The gather loads no model: it imports no torch (it starts in a second, not ten)."""
    probe = (f"import sys; sys.path.insert(0, {str(REPO / 'stages')!r}); import gather; "
             "gather.main(['--params', 'params.yaml']); print('torch' in sys.modules)")
    (study_tree / "params.yaml").write_text(yaml.safe_dump(runs_params()))
    result = subprocess.run([sys.executable, "-c", probe], cwd=study_tree, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False" and (study_tree / "results" / "metrics" / "headline.json").is_file()


def test_gather_names_a_missing_run_folder_and_its_stage(study_tree, monkeypatch):
    shutil.rmtree(study_tree / Layout().scores("lora", "classic", "dog"))
    with pytest.raises(FileNotFoundError, match=r"1 of the 4 runs .*results/scores/lora/classic/dog \(written by "
                                                r"`python stages/evaluate.py --subject dog --method lora "
                                                r"--strategy classic`\)"):
        run_stage("gather", params_args(study_tree, monkeypatch))
    assert not (study_tree / "results" / "metrics").exists()


def test_ablation_runs_are_named_with_their_strength():
    assert study.evaluate_command("ablation", ("lora", "classic@0.5", "dog")) == (
        "python stages/evaluate.py --study ablation --subject dog --method lora --strategy classic --strength 0.5")
    assert study.evaluate_command("ablation", ("lora", "none", "dog")) == (
        "python stages/evaluate.py --study ablation --subject dog --method lora --strategy none")


def test_gather_refuses_runs_scored_by_other_encoders(study_tree, monkeypatch):
    other = study_tree / Layout().scores("lora", "classic", "backpack") / "encoders.json"
    other.write_text(json.dumps({**ENCODERS_JSON, "pretrained": True}))
    with pytest.raises(ValueError, match=r"results/scores/lora/classic/backpack/encoders.json.*differs from "
                                         r"results/scores/lora/none/dog/encoders.json"):
        run_stage("gather", params_args(study_tree, monkeypatch))


@pytest.mark.parametrize(("file", "change", "message"), [
    ("per_image.csv", lambda t: t.drop(columns="clip_t"), r"per_image.csv: missing column\(s\) \['clip_t'\]"),
    ("per_image.csv", lambda t: t.assign(dino="high"), r"per_image.csv: column\(s\) \['dino'\] must hold numbers"),
    ("div.csv", lambda t: t.assign(strategy="classic"), r"div.csv: line 2 is not of the run"),
    ("pres.csv", lambda t: t.iloc[:0], r"pres.csv: no rows"),
])
def test_gather_names_a_malformed_score_file(study_tree, monkeypatch, file, change, message):
    path = study_tree / Layout().scores("lora", "none", "dog") / file
    change(pd.read_csv(path)).to_csv(path, index=False)
    with pytest.raises(ValueError, match=message):
        run_stage("gather", params_args(study_tree, monkeypatch))


def test_evaluate_fails_clearly_before_loading_encoders(tmp_path, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("encoders loaded before the inputs were checked")

    monkeypatch.setattr(run, "load_encoders", no_load)
    make_study_tree(tmp_path)
    argv = params_args(tmp_path, monkeypatch) + run_args("lora", "none", "dog")
    manifest_path = tmp_path / "data" / "dreambench" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({"subjects": [s for s in manifest["subjects"] if s["name"] != "dog"]}))
    with pytest.raises(ValueError, match=r"manifest.json: no reference images for subject 'dog'"):
        run_stage("evaluate", argv)

    (tmp_path / Layout().samples("lora", "none", "dog") / "01.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"samples.jsonl:2: image .*01.png' not found"):
        run_stage("evaluate", argv)

    shutil.rmtree(tmp_path / "results" / "samples")
    with pytest.raises(FileNotFoundError, match="samples/lora/none/dog/samples.jsonl: no samples"):
        run_stage("evaluate", argv)
    assert not (tmp_path / "results" / "scores").exists()
