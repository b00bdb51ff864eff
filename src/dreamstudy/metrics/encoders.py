"""The DreamBench image and text encoders: OpenAI CLIP ViT-B/32 and DINO ViT-S/16, and LPIPS (AlexNet) for DIV.

Architectures and preprocessing follow the de-facto implementation of the protocol
(adobe-research/custom-diffusion, customconcept101/evaluate.py). Without internet the same
architectures can be built with seeded random weights, so the pipeline runs end to end; such numbers
mean nothing and are labelled "random init" wherever they are recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import lpips
import open_clip
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from dreamstudy.errors import StudyError
from dreamstudy.metrics.diversity import LPIPS_NET, load_lpips

CLIP_ARCH, CLIP_WEIGHTS = "ViT-B-32", "openai"
DINO_ARCH, DINO_WEIGHTS = "vit_small_patch16_224", "dino"
RANDOM_INIT = "random init"
IMAGE_ENCODERS = ("clip", "dino")


def _preprocess(resize: int, crop: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    # Resize and crop act on the PIL image (PIL bicubic), as the reference implementation does.
    return v2.Compose([
        v2.Resize(resize, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(crop),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=mean, std=std),
    ])


CLIP_PREPROCESS = _preprocess(224, 224, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
DINO_PREPROCESS = _preprocess(256, 224, timm.data.IMAGENET_DEFAULT_MEAN, timm.data.IMAGENET_DEFAULT_STD)


class EncoderLoadError(StudyError, RuntimeError):
    """Pretrained encoder weights could not be loaded (typically: no internet and no cache)."""


@dataclass
class Encoders:
    """Frozen CLIP and DINO models; every embedding is L2-normalised and returned on the CPU."""

    clip: torch.nn.Module
    dino: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    device: str
    pretrained: bool
    lpips: lpips.LPIPS
    seed: int = 0  # of the random weights when not pretrained

    def describe(self) -> dict:
        """What produced the numbers, as recorded in encoders.json."""
        weights = (CLIP_WEIGHTS, DINO_WEIGHTS) if self.pretrained else (RANDOM_INIT, RANDOM_INIT)
        return {
            "pretrained": self.pretrained,
            "clip": f"{CLIP_ARCH} ({weights[0]})",
            "dino": f"{DINO_ARCH} ({weights[1]})",
            "lpips": LPIPS_NET if self.pretrained else f"{LPIPS_NET} (random backbone)",
        }

    def cache_key(self, which: str) -> str:
        """Names the weights behind `which`'s embeddings: random weights differ with their seed."""
        arch, weights = {"clip": (CLIP_ARCH, CLIP_WEIGHTS), "dino": (DINO_ARCH, DINO_WEIGHTS)}[which]
        return f"{which}-{arch}-{weights if self.pretrained else f'random-seed{self.seed}'}"

    def embed_images(self, which: str, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
        """`which` is "clip" or "dino"."""
        if which not in IMAGE_ENCODERS:
            raise ValueError(f"unknown image encoder {which!r}; valid: {list(IMAGE_ENCODERS)}")
        return getattr(self, f"embed_images_{which}")(images, batch_size)

    def embed_images_clip(self, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
        return self._embed(images, batch_size,
                           lambda batch: self.clip.encode_image(self._pixels(batch, CLIP_PREPROCESS)))

    def embed_images_dino(self, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
        # timm with num_classes=0 returns the pooled features: the CLS token after the final norm.
        return self._embed(images, batch_size, lambda batch: self.dino(self._pixels(batch, DINO_PREPROCESS)))

    def embed_texts(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        return self._embed(texts, batch_size,
                           lambda batch: self.clip.encode_text(self.tokenizer(list(batch)).to(self.device)))

    def _pixels(self, images: Sequence[Image.Image], preprocess: v2.Compose) -> torch.Tensor:
        return torch.stack([preprocess(image.convert("RGB")) for image in images]).to(self.device)

    @torch.no_grad()
    def _embed(self, items: Sequence, batch_size: int, encode: Callable) -> torch.Tensor:
        if not items:
            raise ValueError("nothing to embed: the list of images or texts is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        batches = [encode(items[start:start + batch_size]).float().cpu()
                   for start in range(0, len(items), batch_size)]
        return F.normalize(torch.cat(batches), dim=-1)


def load_encoders(pretrained: bool, device: str = "cpu", seed: int = 0) -> Encoders:
    """Build CLIP, DINO and LPIPS; pretrained=False gives the same architectures with weights drawn from `seed`
    (LPIPS keeps its calibrated linear layers, which ship with the lpips package)."""
    # A private RNG stream: random init is reproducible and leaves the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = load_weights(f"CLIP {CLIP_ARCH} ({CLIP_WEIGHTS})", pretrained, lambda: open_clip.create_model(
            # OpenAI's CLIP uses QuickGELU; open_clip's plain ViT-B-32 config does not, so force it
            # for the pretrained weights and their random-init stand-in alike.
            CLIP_ARCH, pretrained=CLIP_WEIGHTS if pretrained else None, force_quick_gelu=True))
        dino = load_weights(f"DINO {DINO_ARCH}.{DINO_WEIGHTS}", pretrained, lambda: timm.create_model(
            f"{DINO_ARCH}.{DINO_WEIGHTS}", pretrained=pretrained, num_classes=0))
        perceptual = load_weights(f"LPIPS {LPIPS_NET} (torchvision ImageNet AlexNet)", pretrained,
                           lambda: load_lpips(pretrained))
    for model in (clip, dino, perceptual):
        model.requires_grad_(False).eval().to(device)
    return Encoders(clip=clip, dino=dino, tokenizer=open_clip.get_tokenizer(CLIP_ARCH),
                    device=device, pretrained=pretrained, lpips=perceptual, seed=seed)


def load_weights(what: str, pretrained: bool, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    if not pretrained:
        return build()
    try:
        return build()
    except Exception as err:  # the hub client raises many types; all mean "weights unavailable"
        raise EncoderLoadError(
            f"could not load the pretrained {what} weights: {err}\n"
            "Check the internet connection or the HF_HOME / TORCH_HOME caches; to run without them, set "
            "eval.pretrained_encoders: false (random-init encoders, labelled as such, "
            "numbers not comparable to published ones)."
        ) from err
