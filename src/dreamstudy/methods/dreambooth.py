"""DreamBooth: the whole UNet fine-tuned (diffusers' train_dreambooth.py), optionally the text encoder too.

Saved as train_dreambooth.py saves it, a complete pipeline folder that `StableDiffusionPipeline.from_pretrained`
opens: the trained unet/ (and text_encoder/) in float16, the other components (vae/, tokenizer/, scheduler/,
an untrained text_encoder/, model_index.json) copies of the base model's files, byte for byte, so that DVC's
content-addressed cache stores them once for all the study's models.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import save_file
from transformers import CLIPTextModel, PreTrainedModel

from dreamstudy.methods.registry import PlainText, Schedule, register
from dreamstudy.models.loading import ModelLoadError

UNET = "unet"
TEXT_ENCODER = "text_encoder"
FROZEN = ("vae", "tokenizer", "scheduler")
INDEX = "model_index.json"


def save_half(model: torch.nn.Module, folder: Path) -> None:
    """`model.save_pretrained` (safetensors) with float16 weights, leaving `model` itself as it is.

    float16 halves the disk cost: a full UNet is 3.4 GB in float32, and the paper-scale study keeps 60 of
    them (30 subjects x 2 strategies). Copies are cast, so the caller's float32 weights are not rounded.
    """
    half = {name: value.half() for name, value in model.state_dict().items()}
    if isinstance(model, PreTrainedModel):
        # Its config keeps the model's float32, as the hub's float16 weight files do: transformers loads a
        # model in its config's dtype and diffusers in float32, so a stock pipeline would otherwise pair a
        # float16 text encoder with a float32 UNet.
        model.save_pretrained(folder, state_dict=half)
    else:
        # What diffusers' save_pretrained writes (config and one safetensors file), without the float32 copy of
        # the model that casting a copy would hold beside the optimizer's state (3.4 GB for SD 1.5's UNet)
        model.save_config(folder)
        save_file({name: value.contiguous() for name, value in half.items()},
                  Path(folder) / SAFETENSORS_WEIGHTS_NAME, metadata={"format": "pt"})


def base_folder(source: str) -> Path:
    """The local pipeline folder of `source` (model.pretrained resolved): itself, or for a hub id its snapshot
    in the Hugging Face cache, with what `load_pipeline` loads from it."""
    if Path(source).is_dir():
        return Path(source)
    try:
        return Path(StableDiffusionPipeline.download(source, safety_checker=None, feature_extractor=None,
                                                     use_safetensors=True))
    except OSError as err:
        raise ModelLoadError(f"model.pretrained {source!r}: its pipeline files, which a DreamBooth model folder "
                             f"copies, are neither cached nor downloadable ({err})") from err


def copy_index(base: Path, folder: Path) -> None:
    """base's model_index.json; rewritten only if it names components the study never loads (SD 1.5's safety
    checker and its feature extractor), which are then set to none as `load_pipeline` sets them."""
    index = json.loads((base / INDEX).read_text())
    unused = [name for name, entry in index.items()
              if isinstance(entry, list) and entry != [None, None] and name not in (UNET, TEXT_ENCODER, *FROZEN)]
    if not unused:
        shutil.copy2(base / INDEX, folder / INDEX)
        return
    index |= {name: [None, None] for name in unused} | {"requires_safety_checker": False}
    (folder / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")  # as diffusers writes it


@dataclass(frozen=True)
class DreamBooth(PlainText):
    trains_text_encoder: bool = False

    def token(self, identifier: str) -> str:
        return identifier

    def check(self, tokenizer, token: str) -> None:
        pass  # any word will do: the identifier trains through the fine-tuned UNet (and text encoder)

    def prepare(self, parts, tokens: Sequence[str], class_names: Sequence[str]) -> list[torch.nn.Parameter]:
        models = [parts.unet, parts.text_encoder] if self.trains_text_encoder else [parts.unet]
        for model in models:
            model.requires_grad_(True)
        return [p for model in models for p in model.parameters()]

    def after_step(self, parts) -> None:
        pass

    def save(self, parts, folder: Path) -> None:
        # The base model is the one `parts` were loaded from: transformers records it in the text encoder.
        folder, base = Path(folder), base_folder(parts.text_encoder.name_or_path)
        trained = {UNET: parts.unet} | ({TEXT_ENCODER: parts.text_encoder} if self.trains_text_encoder else {})
        for name, model in trained.items():
            save_half(model, folder / name)
        for name in (*FROZEN, TEXT_ENCODER):
            if name not in trained:
                shutil.copytree(base / name, folder / name)
        copy_index(base, folder)

    def load_into(self, pipe: StableDiffusionPipeline, folder: Path) -> None:
        """The folder's UNet and text encoder (the base model's own when it was not trained) in `pipe`'s
        place, in its dtype and on its device; the other components are the base model's already."""
        weights = dict(dtype=pipe.dtype, use_safetensors=True)
        pipe.unet = UNet2DConditionModel.from_pretrained(folder, subfolder=UNET, **weights).to(pipe.device)
        pipe.text_encoder = CLIPTextModel.from_pretrained(folder, subfolder=TEXT_ENCODER, **weights).to(pipe.device)


@register("dreambooth")
def dreambooth_from_params(train_params) -> tuple[DreamBooth, Schedule]:
    p = train_params.dreambooth
    return DreamBooth(trains_text_encoder=p.train_text_encoder), Schedule.of(p)
