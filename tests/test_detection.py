"""Each subject of a pair found by OWLv2: boxes chosen per subject (one object is not both, two dogs are two
boxes), the stock post-processing's boxes, fidelity on square crops, both found, identity mixing; the report's
crops table."""

import math

import huggingface_hub
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dreamstudy.metrics.cache import EmbeddingCache
from dreamstudy.metrics.detector import Box, SubjectFinder, load_detector, locate
from dreamstudy.metrics.encoders import EncoderLoadError
from dreamstudy.metrics.multi import crop_square, evaluate_pair
from dreamstudy.metrics.multi_study import multi_stats, multi_tests
from dreamstudy.metrics.registry import MULTI_METRICS
from dreamstudy.report.multi import crops_latex
from tests.helpers import noise_image
from tests.test_multi_study import ColourEncoders, image, sample

CORNERS = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [40, 0, 50, 10]])


def test_each_subject_takes_its_best_box_that_no_other_subject_holds():
    scores = torch.tensor([[0.9, 0.8], [0.2, 0.7], [0.1, 0.6], [0.3, 0.02]])  # [boxes, classes]
    first, second = locate(scores, CORNERS, [0, 1], threshold=0.1, max_iou=0.5)
    assert (first.x0, first.score) == (0, pytest.approx(0.9))
    assert (second.x0, second.score) == (20, pytest.approx(0.6)) and second.text() == "20 20 30 30"  # box 1: IoU 0.68
    assert locate(scores, CORNERS, [0, 1], threshold=0.1, max_iou=0.7)[1].x0 == 1
    assert [box.x0 for box in locate(scores, CORNERS, [0, 1], threshold=0.1, max_iou=1.0)] == [0, 0]
    # two subjects of one class: the two best boxes that are distinct objects
    assert [box.x0 for box in locate(scores, CORNERS, [0, 0], threshold=0.1, max_iou=0.5)] == [0, 40]
    # the surer subject chooses first, whatever its place in the pair
    assert [box.x0 for box in locate(scores[:, [1, 0]], CORNERS, [0, 1], threshold=0.1, max_iou=0.5)] == [20, 0]
    first, second = locate(scores, CORNERS, [0, 1], threshold=0.85, max_iou=0.5)
    assert first.x0 == 0 and second is None


def test_crops_are_squares_around_the_box_inside_the_image():
    picture = Image.new("RGB", (40, 30))
    assert crop_square(picture, Box(10, 10, 30, 14, 1.0)).size == (20, 20)
    assert crop_square(picture, Box(0, 0, 60, 5, 1.0)).size == (30, 30)  # at most the image's shorter side
    assert crop_square(picture, Box(5, 5, 5, 5, 1.0)).size == (1, 1)  # a degenerate box is a pixel


def halves(path, left, right) -> str:
    picture = Image.new("RGB", (16, 8), left)
    picture.paste(Image.new("RGB", (8, 8), right), (8, 0))
    picture.save(path)
    return str(path)


LEFT, RIGHT = Box(0, 0, 8, 8, 0.9), Box(8, 0, 16, 8, 0.8)


def finding(*boxes):
    """A detector that finds the pair's subjects at `boxes`, in every image."""
    return lambda images, subjects: [list(boxes) for _ in images]


def crop_scores_of(tmp_path, subjects, finder) -> pd.Series:
    references = {subjects[0]: [image(tmp_path / "r.png", "red")], subjects[1]: [image(tmp_path / "b.png", "blue")]}
    row = {**sample(halves(tmp_path / "s.png", "red", "blue"), 0, 0), "subjects": list(subjects),
           "subject": "+".join(subjects)}
    return evaluate_pair([row], references, ColourEncoders(), 4, EmbeddingCache(ColourEncoders()), finder).iloc[0]


def test_fidelity_on_crops_both_found_and_identity_mixing(tmp_path):
    # the dog (red photos) on the left, the backpack (blue) on the right
    right = crop_scores_of(tmp_path, ("dog", "backpack"), finding(LEFT, RIGHT))
    assert (right.crop_dino_1, right.crop_dino_2, right.crop_clip_i, right.mixing) == pytest.approx((1, 1, 1, 0))
    assert (right.both_found, right.box_1, right.score_2) == (1, "0 0 8 8", pytest.approx(0.8))
    # the detector calls the blue half the dog: each crop is the other subject's
    swapped = crop_scores_of(tmp_path, ("dog", "backpack"), finding(RIGHT, LEFT))
    assert (swapped.crop_dino, swapped.mixed_1, swapped.mixed_2, swapped.mixing) == pytest.approx((0, 1, 1, 1))
    # two dogs are told apart by their crops, not by which box the detector gave which query
    dogs = crop_scores_of(tmp_path, ("dog", "dog2"), finding(RIGHT, LEFT))
    assert (dogs.box_1, dogs.crop_dino, dogs.mixing) == ("0 0 8 8", pytest.approx(1), 0)
    one = crop_scores_of(tmp_path, ("dog", "backpack"), finding(None, LEFT))  # only the dog's box, held by the backpack
    assert (one.both_found, one.crop_dino, one.mixing, one.box_1) == (0, pytest.approx(0), 1, "")
    assert math.isnan(one.crop_dino_1) and math.isnan(one.mixed_1)


@pytest.fixture(scope="module")
def detector():
    return load_detector(pretrained=False, image_size=64, seed=0)


def test_random_init_owlv2_boxes_are_the_stock_post_processings(detector):
    images = [noise_image(seed, size=40) for seed in range(2)]
    detections = detector.detect(images, ["dog", "backpack"])
    queries = detector.tokenizer(["a photo of a dog", "a photo of a backpack"], padding="max_length", max_length=16,
                                 return_tensors="pt")
    pixels = detector.image_processor(images=images, size={"height": 64, "width": 64},
                                      return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        outputs = detector.model(input_ids=queries.input_ids.repeat(2, 1), pixel_values=pixels,
                                 attention_mask=queries.attention_mask.repeat(2, 1), interpolate_pos_encoding=True)
    stock = detector.image_processor.post_process_object_detection(outputs, threshold=-1, target_sizes=[(40, 40)] * 2)
    for (scores, corners), expected in zip(detections, stock, strict=True):
        assert scores.shape == (16, 2) and torch.equal(corners, expected["boxes"])  # (64 / 16)^2 boxes
        assert torch.equal(scores.max(dim=1).values, expected["scores"])
        assert torch.equal(scores.gather(1, expected["labels"][:, None])[:, 0], expected["scores"])  # ties: either
    again = load_detector(pretrained=False, image_size=64, seed=0).detect(images, ["dog", "backpack"])
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(detections, again))
    assert detector.describe() == "OWLv2 base/16 (random init), 64 px"
    assert detector.tokenizer("a photo of a dog").input_ids == [49406, 320, 1125, 539, 320, 1929, 49407]


def test_finder_queries_each_class_once(detector):
    found = SubjectFinder(detector, threshold=0.0, max_iou=0.5)([noise_image(3, size=40)] * 2, ["dog", "dog2"])
    assert len(found) == 2 and all(len(boxes) == 2 and all(isinstance(b, Box) for b in boxes) for boxes in found)
    first, second = found[0]
    assert (first.x0, first.y0) != (second.x0, second.y0) or (first.x1, first.y1) != (second.x1, second.y1)


def test_pretrained_detector_offline_error_names_it_and_the_way_out(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(EncoderLoadError, match=r"OWLv2 google/owlv2-base-patch16-ensemble(.|\n)*"
                                               r"eval.pretrained_encoders: false"):
        load_detector(pretrained=True)


def test_crops_table_has_every_variant_and_says_what_found_them():
    per_prompt = pd.DataFrame([{"variant": variant, "pair": f"p{pair}", "prompt_index": prompt,
                                **{m.name: 0.5 + pair / 10 + prompt / 100 for m in MULTI_METRICS}}
                               for variant in ("lora_joint", "lora_sum") for pair in range(3) for prompt in range(2)])
    stats = multi_stats(per_prompt, seed=0, n_boot=50, confidence=0.9)
    latex = crops_latex(stats, multi_tests(per_prompt, "lora_joint", 0.05), "OWLv2 base/16 (random init), 64 px",
                        ["random init"])
    assert "Both found & DINO (crops) & CLIP-I (crops) & Identity mixing" in latex
    rows = [line.split(" & ")[0] for line in latex.splitlines() if line.endswith("\\\\") and "$" in line]
    assert rows == ["lora\\_joint", "lora\\_sum"] and "OWLv2 base/16 (random init), 64 px" in latex
    assert np.isclose(stats[(stats.variant == "lora_sum") & (stats.metric == "mixing")]["mean"].iloc[0], 0.605)
