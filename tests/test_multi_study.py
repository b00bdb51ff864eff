"""The multi-concept study's measures and tables: each subject's DINO and CLIP-I of a pair's image, their mean
and minimum, CLIP-T without either identifier, CLIPScore; each variant's mean over pairs with its interval,
paired tests against joint training; retention, image by image against the single-concept model."""


import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dreamstudy.metrics.cache import EmbeddingCache
from dreamstudy.metrics.multi import CLIP_SCORE_WEIGHT, clip_t_text, evaluate_pair
from dreamstudy.metrics.multi_study import (
    RETENTION_COLUMNS,
    multi_stats,
    multi_tests,
    retention_stats,
    retention_table,
)
from dreamstudy.metrics.registry import MULTI_METRICS
from dreamstudy.multi.variants import parse_sample_label, sample_label


class ColourEncoders:
    """An image's embedding is its mean colour (unit length), a text's a fixed vector: so a red image is
    DINO 1 to red photos and 0 to blue ones."""

    def cache_key(self, which: str) -> str:
        return f"colour-{which}"

    def embed_images(self, which, images, batch_size=32) -> torch.Tensor:
        colours = torch.tensor(np.array([np.asarray(i.convert("RGB"), dtype=np.float32).mean(axis=(0, 1))
                                         for i in images]))
        return torch.nn.functional.normalize(colours, dim=1)

    def embed_images_clip(self, images, batch_size=32) -> torch.Tensor:
        return self.embed_images("clip", images)

    embed_images_dino = embed_images_clip

    def embed_texts(self, texts, batch_size=32) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0]] * len(texts)), dim=1)


def image(path, colour) -> str:
    Image.new("RGB", (8, 8), colour).save(path)
    return str(path)


def sample(path, prompt_index, image_index) -> dict:
    return {"subject": "dog+backpack", "variant": "lora_sum", "regions": True, "subjects": ["dog", "backpack"],
            "tokens": ["mth", "sks"], "prompt_index": prompt_index, "prompt_kind": "background",
            "prompt": "a mth dog wearing a sks backpack on a beach", "image_index": image_index, "seed": 0,
            "file": "x.png", "model": "tiny", "path": path}


def nowhere(images, subjects):
    """A detector that finds nothing."""
    return [[None] * len(subjects) for _ in images]


def test_clip_t_text_has_neither_identifier():
    assert clip_t_text(sample("", 0, 0)) == "a dog wearing a backpack on a beach"
    assert clip_t_text({"prompt": "a <mth> dog and a <sks> backpack", "tokens": ["<mth>", "<sks>"]}) == \
        "a dog and a backpack"


def test_each_subjects_fidelity_its_mean_and_minimum(tmp_path):
    references = {"dog": [image(tmp_path / "d0.png", "red"), image(tmp_path / "d1.png", "red")],
                  "backpack": [image(tmp_path / "b0.png", "blue")]}
    samples = [sample(image(tmp_path / "red.png", "red"), 0, 0), sample(image(tmp_path / "blue.png", "blue"), 0, 1)]
    scores = evaluate_pair(samples, references, ColourEncoders(), 2, EmbeddingCache(ColourEncoders()), nowhere)
    red, blue = scores.iloc[0], scores.iloc[1]
    assert (red.dino_1, red.dino_2, red.dino_mean, red.dino_min) == pytest.approx((1, 0, 0.5, 0))
    assert (blue.clip_i_1, blue.clip_i_2, blue.clip_i_min) == pytest.approx((0, 1, 0))
    assert red.clip_t == pytest.approx(1) and blue.clip_t == pytest.approx(0)
    assert red.clip_score == pytest.approx(CLIP_SCORE_WEIGHT)
    assert list(scores.variant) == ["lora_sum@regions"] * 2 and list(scores.pair) == ["dog+backpack"] * 2
    assert (scores.both_found == 0).all() and scores[["crop_dino", "crop_clip_i", "mixing"]].isna().all().all()


def per_prompt(shift: float) -> pd.DataFrame:
    """Three pairs x two prompts of `lora_joint` (value = pair number) and `lora_sum` (that + shift)."""
    rows = [{"variant": variant, "pair": f"p{pair}", "prompt_index": prompt,
             **{m.name: pair + prompt / 10 + (shift if variant == "lora_sum" else 0) for m in MULTI_METRICS}}
            for variant in ("lora_joint", "lora_sum") for pair in range(3) for prompt in range(2)]
    return pd.DataFrame(rows)


def test_means_over_pairs_with_intervals_and_tests_against_joint_training():
    stats = multi_stats(per_prompt(1.0), seed=0, n_boot=200, confidence=0.9)
    joint = stats[(stats.variant == "lora_joint") & (stats.metric == "dino_min")].iloc[0]
    assert joint["mean"] == pytest.approx(1.05) and joint.ci_low < 1.05 < joint.ci_high and joint.n_pairs == 3
    assert set(stats.metric) == {m.name for m in MULTI_METRICS}
    tests = multi_tests(per_prompt(1.0), "lora_joint", alpha=0.05)
    assert set(tests.variant) == {"lora_sum"} and list(tests.mean_diff) == pytest.approx([1.0] * len(tests))
    assert list(tests.p_value) == pytest.approx([0.25] * len(tests)) and not tests.significant.any()  # exact, n=3
    same = multi_tests(per_prompt(0.0), "lora_joint", alpha=0.05)
    assert same.p_value.isna().all() and (same.note == "all differences are 0").all()
    assert multi_tests(per_prompt(1.0), None, alpha=0.05).empty


def test_sample_labels():
    assert sample_label("lora_sum", regional=True) == "lora_sum@regions"
    assert parse_sample_label("lora_sum@regions") == ("lora_sum", True)
    assert parse_sample_label("dreambooth_joint") == ("dreambooth_joint", False)
    for bad in ("mix_of_show", "lora_sum@boxes"):
        with pytest.raises(ValueError, match="no multi-concept variant"):
            parse_sample_label(bad)


def per_image_scores(subject: str, offset: float, seed_shift: int = 0) -> pd.DataFrame:
    """Per-image scores (metrics.evaluate's columns that retention reads) of 2 prompts x 2 images."""
    return pd.DataFrame([{"subject": subject, "prompt_index": p, "image_index": k, "prompt": f"prompt {p}",
                          "seed": 10 * p + k + seed_shift, "dino": 0.5 + offset + p / 10, "clip_i": 0.6 + offset,
                          "clip_t": 0.3 - offset} for p in range(2) for k in range(2)])


def retention(shift: float, pairs: int = 3) -> pd.DataFrame:
    """Each pair's two subjects alone from `lora_sum`, their scores `shift` off the single-concept ones."""
    return pd.concat([retention_table("lora_sum", f"pair{i}", per_image_scores(s, shift + i / 100),
                                      per_image_scores(s, i / 100), where="test")
                      for i in range(pairs) for s in ("dog", "backpack")], ignore_index=True)


def test_retention_pairs_each_image_with_the_single_concept_one():
    table = retention(-0.1)
    assert list(table.columns) == list(RETENTION_COLUMNS) and len(table) == 3 * 2 * 4
    assert (table.dino - table.dino_single).to_numpy() == pytest.approx([-0.1] * len(table))
    assert (table.clip_t - table.clip_t_single).to_numpy() == pytest.approx([0.1] * len(table))
    with pytest.raises(ValueError, match=r"here: 4 image\(s\) without the same prompt and seed"):
        retention_table("lora_sum", "pair0", per_image_scores("dog", 0), per_image_scores("dog", 0, seed_shift=1),
                        where="here")
    with pytest.raises(ValueError, match=r"here: 2 image\(s\)"):  # the single-concept run has one prompt only
        single = per_image_scores("dog", 0)
        retention_table("lora_sum", "pair0", per_image_scores("dog", 0), single[single.prompt_index == 0], where="here")


def test_retention_means_differences_and_tests():
    stats = retention_stats(retention(-0.1), seed=0, n_boot=200, confidence=0.9, alpha=0.05)
    dino = stats[stats.metric == "dino"].iloc[0]
    assert set(stats.metric) == {"dino", "clip_i", "clip_t"} and dino.n_pairs == 3
    assert dino.mean_diff == pytest.approx(-0.1) and dino.ci_low <= -0.1 <= dino.ci_high
    assert dino["mean"] == pytest.approx(dino.single - 0.1) and dino.single == pytest.approx(0.56)
    assert dino.p_value == pytest.approx(0.25) and not dino.significant  # exact Wilcoxon, n = 3, all below 0
    same = retention_stats(retention(0.0), seed=0, n_boot=200, confidence=0.9, alpha=0.05)
    assert same.p_value.isna().all() and (same.note == "all differences are 0").all()
