"""Turn `model.pretrained` (hub id, local diffusers folder, or a built-in random-init model) into SD 1.x parts.

Built-in: "tiny" (smoke runs, seconds on a CPU) and "sd15-random" (SD 1.5's exact architecture, to measure
memory and speed at the real size); both are random-init, built once into the model cache, and checked
against the manifest of their files before each use (built again when they do not match).

Weights only ever come from safetensors files (never unpickled), and every way they can fail to load
(offline, unknown or gated id) ends in one `ModelLoadError` that says how to get them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from huggingface_hub.errors import HFValidationError
from transformers import CLIPTextModel, CLIPTokenizer

from dreamstudy.errors import StudyError
from dreamstudy.layout import cache_dir
from dreamstudy.models import sd15, tiny

TINY = "tiny"
SD15_RANDOM = "sd15-random"
RANDOM_MODELS = {TINY: tiny, SD15_RANDOM: sd15}  # name -> module with its ARCHITECTURE
TINY_SEED = 0
# Bump when build_random_pipeline changes in a way an ARCHITECTURE does not show.
TINY_BUILD_VERSION = 1
# Their versions can change the tiny model's bytes (init, serialisation, vocabulary).
TINY_LIBRARIES = ("torch", "diffusers", "transformers", "open_clip_torch")
MANIFEST = "manifest.json"  # in a built folder: its files' sizes and sha256, written last
# Above this size a built folder is checked by its files' sizes only, which catches the usual damage (a truncated
# copy, a full disk, an interrupted write), not a changed byte. Hashing is cheap for the tiny model (16 MB, ~12 ms)
# but not for sd15-random (4.3 GB: measured 2.9 s with the files in the page cache, 5.7 s not, on a 2-core machine),
# which would cost as much as loading it in every process that uses it.
HASH_LIMIT_BYTES = 256 * 2**20


class ModelLoadError(StudyError, RuntimeError):
    """The pretrained model named in params.yaml cannot be found or loaded."""


@dataclass
class Components:
    """What LoRA training needs from a pretrained SD 1.x model."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler


def random_model_fingerprint(name: str = TINY) -> str:
    """Hash of everything that decides a built-in model's bytes, so a change gets a fresh folder."""
    recipe = {
        "build": TINY_BUILD_VERSION,
        "seed": TINY_SEED,
        "architecture": RANDOM_MODELS[name].ARCHITECTURE,
        "libraries": {name: version(name) for name in TINY_LIBRARIES},
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def build_once(folder: Path, build: Callable[[Path], None]) -> Path:
    """`folder`, built by `build` on first use in a temporary sibling, with a manifest of its files, and
    renamed into place; built again (one line on stderr) when it no longer matches its manifest.

    The rename is atomic, so the folder is complete or absent, and of two concurrent builders the
    later one finds it taken and discards its copy.
    """
    if folder.is_dir():
        damage = built_folder_damage(folder)
        if damage is None:
            return folder
        print(f"dreamstudy: {damage}; rebuilding {folder}", file=sys.stderr)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        build(tmp)
        write_manifest(tmp)
        _install(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _install(tmp: Path, folder: Path) -> None:
    """Rename `tmp` to `folder`. A damaged folder there is first moved aside whole, so that another process
    finds the folder damaged or absent, never half-deleted; one another builder has repaired meanwhile stays."""
    if folder.is_dir() and built_folder_damage(folder) is not None:
        damaged = Path(tempfile.mkdtemp(prefix=f".{folder.name}.damaged.", suffix=".tmp", dir=folder.parent))
        with contextlib.suppress(FileNotFoundError):  # another builder moved it first
            os.replace(folder, damaged)
        shutil.rmtree(damaged, ignore_errors=True)
    try:
        os.rename(tmp, folder)
    except OSError:
        if not folder.is_dir():
            raise


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()  # in chunks: sd15-random's UNet is 3.4 GB


def write_manifest(folder: Path) -> None:
    """List every file of built folder `folder` with its size and sha256 in MANIFEST, written last: a folder
    without one is incomplete. Sorted and without timestamps, so the same build gives the same bytes."""
    files = {path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size, "sha256": _sha256(path)}
             for path in sorted(folder.rglob("*")) if path.is_file()}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1, sort_keys=True) + "\n")


def built_folder_damage(folder: Path) -> str | None:
    """What of built folder `folder` does not match its manifest, naming the file; None when all of it does.

    Sizes are always checked; sha256 only for folders up to HASH_LIMIT_BYTES (see there)."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"{folder / MANIFEST}: missing (the build did not finish, or predates manifests)"
    except (ValueError, KeyError, TypeError) as err:
        return f"{folder / MANIFEST}: unreadable ({type(err).__name__}: {err})"
    for name, expected in files.items():
        try:
            size = (folder / name).stat().st_size
        except FileNotFoundError:
            return f"{folder / name}: missing (listed in {MANIFEST})"
        if size != expected["bytes"]:
            return f"{folder / name}: {size} bytes, {MANIFEST} says {expected['bytes']}"
    if sum(expected["bytes"] for expected in files.values()) <= HASH_LIMIT_BYTES:
        for name, expected in files.items():
            if _sha256(folder / name) != expected["sha256"]:
                return f"{folder / name}: sha256 differs from {MANIFEST}'s"
    return None


def random_model_path(name: str = TINY) -> Path:
    """Where a built-in model's folder is in the model cache, built or not."""
    return cache_dir() / f"{name}-{random_model_fingerprint(name)}"


def random_model_folder(name: str = TINY) -> Path:
    """A built-in model's folder in the model cache, built on first use (sd15-random: 4.3 GB, about a minute)."""
    architecture = RANDOM_MODELS[name].ARCHITECTURE
    return build_once(random_model_path(name),
                      lambda tmp: tiny.build_random_pipeline(tmp, architecture, seed=TINY_SEED))


def loaded_from(model) -> str:
    """The folder or hub id a model was loaded from: diffusers models keep it in config._name_or_path,
    transformers models in name_or_path."""
    return getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None) or "unknown"


def _looks_like_path(pretrained: str) -> bool:
    # Hub ids are "name" or "owner/name": a leading /, . or ~, or a second slash, means a folder.
    return pretrained.startswith(("/", ".", "~")) or pretrained.count("/") > 1


def resolve_pretrained(pretrained: str) -> str:
    """Map a built-in name to its cached folder, a local folder to itself (checked), anything else to a hub id."""
    if pretrained == TINY:
        # The tiny model's ops are too small to split across threads: a second thread only adds
        # synchronisation (measured: 79 steps/s on one thread, 5x slower on two beside another process).
        torch.set_num_threads(1)
    if pretrained in RANDOM_MODELS:
        return str(random_model_folder(pretrained))
    path = Path(pretrained).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(
                f"{path}: not a diffusers pipeline folder (no model_index.json); "
                "save one with StableDiffusionPipeline.save_pretrained or point model.pretrained elsewhere"
            )
        return str(path)
    if _looks_like_path(pretrained):
        raise ModelLoadError(f"{pretrained}: no such folder (model.pretrained)")
    return pretrained


@contextlib.contextmanager
def _explain_load_failure(pretrained: str) -> Iterator[None]:
    """Re-raise hub and file errors as a ModelLoadError that says how to get the weights."""
    try:
        yield
    except (OSError, HFValidationError) as err:
        if pretrained in RANDOM_MODELS:  # built here, offline: no download or other setting gets it
            raise ModelLoadError(
                f"cannot load the built-in model '{pretrained}' from {random_model_path(pretrained)} "
                f"({type(err).__name__}: {err}).\nIt is built here, offline: delete that folder and the next run "
                "builds it again."
            ) from err
        raise ModelLoadError(
            f"cannot load Stable Diffusion weights '{pretrained}' ({type(err).__name__}: {err}).\n"
            "To get them, do one of:\n"
            "  - connect to the internet: the first run downloads them into the Hugging Face cache;\n"
            "  - for a gated model, log in with `hf auth login` and accept its licence on its hub page;\n"
            "  - set HF_HOME to a Hugging Face cache that already holds them;\n"
            "  - set model.pretrained to a local diffusers folder (one with model_index.json);\n"
            "  - or set `model.pretrained: tiny` (or sd15-random, SD 1.5's size) for a built-in offline "
            "random-init model."
        ) from err


def load_pipeline(
    pretrained: str, *, torch_dtype: torch.dtype | None = None, device: str | torch.device | None = None
) -> StableDiffusionPipeline:
    """The full text-to-image pipeline, without safety checker, on `device`.

    By default on the GPU in float16 when there is one, else on the CPU in float32."""
    cuda = torch.cuda.is_available()
    device = device or ("cuda" if cuda else "cpu")
    torch_dtype = torch_dtype or (torch.float16 if cuda else torch.float32)
    source = resolve_pretrained(pretrained)
    with _explain_load_failure(pretrained):
        pipeline = StableDiffusionPipeline.from_pretrained(
            source, dtype=torch_dtype, use_safetensors=True,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    return pipeline.to(device)


def load_tokenizer(pretrained: str) -> CLIPTokenizer:
    """The tokenizer alone: cheap, so settings that depend on it are checked before any model loads."""
    with _explain_load_failure(pretrained):
        return CLIPTokenizer.from_pretrained(resolve_pretrained(pretrained), subfolder="tokenizer")


def load_components(pretrained: str, tokenizer: CLIPTokenizer | None = None) -> Components:
    """The parts training uses (float32, CPU); DDPM is the scheduler for the noising process.

    `tokenizer`: the one `load_tokenizer` gave, if any (loading one again takes ~0.3 s on CPU)."""
    source = resolve_pretrained(pretrained)
    weights = dict(use_safetensors=True)
    with _explain_load_failure(pretrained):
        return Components(
            tokenizer=tokenizer if tokenizer is not None else load_tokenizer(pretrained),
            text_encoder=CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **weights),
            vae=AutoencoderKL.from_pretrained(source, subfolder="vae", **weights),
            unet=UNet2DConditionModel.from_pretrained(source, subfolder="unet", **weights),
            noise_scheduler=DDPMScheduler.from_pretrained(source, subfolder="scheduler"),
        )
