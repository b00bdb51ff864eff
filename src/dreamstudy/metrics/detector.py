"""Where each subject of a pair is in a generated image: OWLv2 (Minderer et al. 2023, open-vocabulary detection;
google/owlv2-base-patch16-ensemble through transformers), queried with each subject's DreamBench class noun.
The multi-concept study scores each subject's fidelity on its box (metrics/multi.py), counts the images where
both subjects are found, and asks whether a subject's crop looks more like the other subject (identity mixing).

Offline (eval.pretrained_encoders: false) the same architecture is built with seeded random weights, like the
other encoders: its boxes mean nothing, and the report says random init."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.ops import box_convert, box_iou
from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

from dreamstudy.data.dreambench import SUBJECTS
from dreamstudy.metrics.encoders import RANDOM_INIT, load_weights
from dreamstudy.models.tokenizer import write_clip_tokenizer
from dreamstudy.params import OWL_IMAGE_SIZE, OWL_PATCH

OWL_HUB = "google/owlv2-base-patch16-ensemble"
OWL_TEXT_LENGTH = 16  # its text encoder's positions: queries are padded with "!" to this length, as its tokenizer
OWL_QUERY = "a photo of a {}"  # OWL-ViT's query template


@dataclass(frozen=True)
class Box:
    """A detection: corners in the image's pixels, and the detector's score for the subject's class."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    def text(self) -> str:
        return f"{self.x0:.0f} {self.y0:.0f} {self.x1:.0f} {self.y1:.0f}"


@dataclass
class Detector:
    """A frozen OWLv2 and its preprocessing; `image_size` below the checkpoint's 960 runs on interpolated position
    embeddings (faster, for smoke runs)."""

    model: Owlv2ForObjectDetection
    image_processor: Owlv2ImageProcessor
    tokenizer: CLIPTokenizer
    image_size: int
    device: str
    pretrained: bool

    def describe(self) -> str:
        return f"OWLv2 base/16 ({OWL_HUB if self.pretrained else RANDOM_INIT}), {self.image_size} px"

    @torch.no_grad()
    def detect(self, images: Sequence[Image.Image], classes: Sequence[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image: the score of each predicted box for each class, [boxes, classes], and the boxes' corners
        (x0, y0, x1, y1) in the image's pixels, [boxes, 4]."""
        queries = self.tokenizer([OWL_QUERY.format(c) for c in classes], padding="max_length",
                                 max_length=OWL_TEXT_LENGTH, truncation=True, return_tensors="pt")
        pixels = self.image_processor(images=[image.convert("RGB") for image in images], return_tensors="pt",
                                      size={"height": self.image_size, "width": self.image_size})["pixel_values"]
        outputs = self.model(input_ids=queries.input_ids.repeat(len(images), 1).to(self.device),
                             attention_mask=queries.attention_mask.repeat(len(images), 1).to(self.device),
                             pixel_values=pixels.to(self.device),
                             interpolate_pos_encoding=self.image_size != OWL_IMAGE_SIZE)
        scores = torch.sigmoid(outputs.logits.float().cpu())
        corners = box_convert(outputs.pred_boxes.float().cpu(), "cxcywh", "xyxy")
        # The processor pads each image at its bottom and right to a square: boxes are fractions of that square.
        return [(scores[i], corners[i] * max(image.size)) for i, image in enumerate(images)]


def load_detector(pretrained: bool, image_size: int = OWL_IMAGE_SIZE, device: str = "cpu",
                  seed: int = 0) -> Detector:
    """OWLv2 from the hub, or with pretrained=False the checkpoint's architecture with weights drawn from `seed`
    and SD's CLIP tokenizer rebuilt offline (the same BPE; OWLv2 pads with "!" to 16 tokens)."""
    if pretrained:
        processor = load_weights(f"OWLv2 {OWL_HUB}", True, lambda: Owlv2Processor.from_pretrained(OWL_HUB))
        model = load_weights(f"OWLv2 {OWL_HUB}", True, lambda: Owlv2ForObjectDetection.from_pretrained(OWL_HUB))
        image_processor, tokenizer = processor.image_processor, processor.tokenizer
    else:
        with torch.random.fork_rng(devices=[]):  # reproducible, and the caller's RNG is left alone
            torch.manual_seed(seed)
            model = Owlv2ForObjectDetection(Owlv2Config(vision_config={"image_size": OWL_IMAGE_SIZE,
                                                                       "patch_size": OWL_PATCH}))
        with tempfile.TemporaryDirectory() as folder:
            write_clip_tokenizer(folder)
            tokenizer = CLIPTokenizer.from_pretrained(folder, pad_token="!", model_max_length=OWL_TEXT_LENGTH)
        image_processor = Owlv2ImageProcessor()
    model.requires_grad_(False).eval().to(device)
    return Detector(model, image_processor, tokenizer, image_size, device, pretrained)


def locate(scores: torch.Tensor, corners: torch.Tensor, subject_classes: Sequence[int], threshold: float,
           max_iou: float) -> list[Box | None]:
    """Each subject's box, from one image's `Detector.detect` output: the best-scoring box of its class
    (`subject_classes[i]`, a column of `scores`) scoring at least `threshold` and overlapping no box already given
    to another subject by more than `max_iou` (one object is not both subjects; two dogs are two boxes). The
    subject whose class scores highest chooses first. None: not found."""
    best = [scores[:, c].max().item() for c in subject_classes]
    found: list[Box | None] = [None] * len(subject_classes)
    for i in sorted(range(len(subject_classes)), key=lambda i: -best[i]):
        column = scores[:, subject_classes[i]]
        allowed = column >= threshold
        taken = [torch.tensor([b.x0, b.y0, b.x1, b.y1]) for b in found if b is not None]
        if taken:
            allowed &= (box_iou(corners, torch.stack(taken)) <= max_iou).all(dim=1)
        if allowed.any():
            index = torch.where(allowed, column, -1.0).argmax()
            found[i] = Box(*corners[index].tolist(), score=column[index].item())
    return found


@dataclass
class SubjectFinder:
    """Finds the subjects of a pair in images: their class nouns (distinct) are the detector's queries."""

    detector: Detector
    threshold: float
    max_iou: float

    def __call__(self, images: Sequence[Image.Image], subjects: Sequence[str]) -> list[list[Box | None]]:
        classes = list(dict.fromkeys(SUBJECTS[s] for s in subjects))
        columns = [classes.index(SUBJECTS[s]) for s in subjects]
        return [locate(scores, corners, columns, self.threshold, self.max_iou)
                for scores, corners in self.detector.detect(images, classes)]
