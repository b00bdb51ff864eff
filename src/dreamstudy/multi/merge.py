"""Merging separately trained single-concept models into one (issue 11; /work/shared/MULTICONCEPT.md,
"Naive merges" and "CD's constrained closed-form merge"). Library functions only; each writes an artefact
that a stock `StableDiffusionPipeline` loads:

- LoRA (`load_loras`, `fuse_loras`, `save_merged_lora`): each folder is a named diffusers adapter, the
  pipeline runs W0 x + sum_k w_k s_k B_k A_k x (w_k = 1 for "sum", 1/n for "average", MoS's "weight
  fusion"). The merged artefact is ONE pytorch_lora_weights.safetensors holding peft's `cat` of the
  adapters: A = [w_1 s_1 A_1; w_2 s_2 A_2], B = [B_1 B_2], rank r_1 + r_2, alpha = rank. B A is the
  weighted sum exactly, so `load_lora_weights` of that file reproduces the merged model. peft's `linear`
  mixes A's and B's separately, (sum sqrt(w s) B)(sum sqrt(w s) A), which adds the cross terms
  sqrt(w_1 s_1 w_2 s_2) (B_1 A_2 + B_2 A_1): its docstring calls it "a very rough approximation", and it
  refuses different ranks; `svd` is exact only at svd_rank >= r_1 + r_2.
- Textual Inversion (`load_embeddings`): nothing to merge, the two files (two tokens) load side by side.
- Custom Diffusion (`merge_custom_diffusion`, `load_merged_custom_diffusion`): K/V merged per layer by
  `fusion.custom_diffusion_merge`; the folder holds the merged custom_diffusion_kv.safetensors (the
  single-concept format) and each concept's learned_embeds file, renamed learned_embeds_<i>.safetensors.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Sequence

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft.tuners.lora import LoraModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dreamstudy.methods.custom_diffusion import KV
from dreamstudy.methods.lora import WEIGHTS, sort_metadata
from dreamstudy.methods.tokens import EMBEDS, ids
from dreamstudy.multi.fusion import concept_targets, custom_diffusion_merge
from dreamstudy.multi.variants import FUSION, FUSION_MODULE
from dreamstudy.params import MERGED_FROM

MODES = ("sum", "average")
MERGED = "merged"  # the temporary adapter save_merged_lora builds
PREFIX = "photo of a"  # CD drops these positions from its target prompts (text_features)

# Regularisation captions for Custom Diffusion's merge, the study's own: the paper used 200 captions from
# LAION (its caption file is not in its repository); this short list of everyday scenes around DreamBench's
# classes is a stand-in. S = R^T R must be invertible, i.e. the caption tokens must span the text width:
# 178 rows here: enough for the tiny model (width 32), too few for SD 1.5 (768), which needs a longer list.
REG_CAPTIONS = (
    "a dog running on a sandy beach at sunset",
    "a cat sleeping on a wooden windowsill",
    "a teddy bear sitting on a child's bed",
    "a red backpack leaning against a tree",
    "a pair of sneakers on a city sidewalk",
    "a plastic toy robot on a kitchen table",
    "a yellow rubber duck floating in a bathtub",
    "a pair of pink sunglasses on the sand",
    "a leather boot standing in fresh snow",
    "a vase of flowers next to an open window",
    "a teapot and two cups on a tray",
    "a candle burning in a dark room",
    "a bowl of fruit on a marble counter",
    "a small car parked on a quiet street",
    "a mountain lake under a cloudy sky",
    "an old wooden chair in an empty room",
    "a man reading a newspaper in a cafe",
    "a woman walking her dog in the park",
    "a watercolor painting of a lighthouse",
    "a stuffed animal on a shelf of books",
)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_distinct(folders: Sequence[Path], weight_name: str) -> None:
    """ValueError unless there are two or more folders and no two hold the same `weight_name` file (the same
    folder twice, or a copy): merging a model with itself is a mistake, not a multi-concept model."""
    if len(folders) < 2:
        raise ValueError(f"a merge needs two or more concepts, got {[str(f) for f in folders]}")
    seen = {}
    for folder in folders:
        digest = _digest(Path(folder) / weight_name)
        if digest in seen:
            raise ValueError(f"{seen[digest]} and {folder} hold the same {weight_name}: the same concept twice")
        seen[digest] = folder


# ---------------------------------------------------------------------------------------------- LoRA


def _lora_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Each LoRA matrix's size without its rank: in-features of A ("down"), out-features of B ("up")."""
    with safe_open(Path(folder) / WEIGHTS, "pt") as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    return {key: shape[1:] if ".down." in key or ".lora_A." in key else shape[:1] for key, shape in shapes.items()}


def check_loras(folders: Sequence[Path]) -> None:
    """ValueError, naming the folders, for the same LoRA twice or LoRAs of base models of different shapes.
    Ranks and targets may differ: `cat` handles both exactly."""
    check_distinct(folders, WEIGHTS)
    first = _lora_shapes(folders[0])
    for folder in folders[1:]:
        shapes = _lora_shapes(folder)
        bad = sorted(key for key in first.keys() & shapes.keys() if first[key] != shapes[key])
        if bad:
            raise ValueError(f"{folders[0]} and {folder} were trained on base models of different shapes: "
                             f"{bad[0]} is {first[bad[0]]} vs {shapes[bad[0]]} (rank aside)")


def adapter_names(count: int) -> list[str]:
    return [f"concept{i}" for i in range(count)]


def load_loras(pipe: StableDiffusionPipeline, folders: Sequence[Path], mode: str = "sum") -> list[str]:
    """Load each LoRA folder (`Lora.save`'s layout) into `pipe` as adapter concept<i> and activate them all,
    each at weight 1 ("sum") or 1/n ("average"). Returns the adapter names. `pipe` is the base model the
    LoRAs were trained on, without adapters of its own."""
    if mode not in MODES:
        raise ValueError(f"unknown merge mode {mode!r}: expected one of {', '.join(MODES)}")
    folders = [Path(f) for f in folders]
    check_loras(folders)
    names = adapter_names(len(folders))
    for name, folder in zip(names, folders):
        try:
            pipe.load_lora_weights(folder, weight_name=WEIGHTS, adapter_name=name)
        except (RuntimeError, ValueError) as error:  # size mismatch against this pipeline's model
            first = " ".join(line.strip() for line in str(error).splitlines()[:2])  # torch lists every layer
            raise ValueError(f"{folder} does not load into this pipeline (another model.pretrained?): {first}") \
                from error
    pipe.set_adapters(names, adapter_weights=[1.0 if mode == "sum" else 1 / len(names)] * len(names))
    return names


def fuse_loras(pipe: StableDiffusionPipeline, names: Sequence[str]) -> None:
    """Bake the adapters, at the weights set_adapters gave them, into the base weights and drop them
    (diffusers' documented fuse_lora + unload_lora_weights): the pipeline is then a plain model."""
    pipe.fuse_lora(components=["unet", "text_encoder"], adapter_names=list(names))
    pipe.unload_lora_weights()


def _tuner(model: torch.nn.Module) -> LoraModel:
    """peft's LoraModel around a model whose adapters diffusers injected: diffusers keeps no tuner object, and
    constructing one the usual way would inject (and initialise) an adapter of its own. add_weighted_adapter
    needs only the model, its configs and the tuner's bookkeeping, set here as LoraModel.__init__ sets them."""
    tuner = LoraModel.__new__(LoraModel)
    torch.nn.Module.__init__(tuner)
    tuner.model, tuner.peft_config = model, model.peft_config
    tuner.targeted_module_names, tuner.targeted_parameter_names = [], []
    layer = next(m for m in model.modules() if isinstance(m, BaseTunerLayer))
    # Injecting the merged adapter re-activates these. diffusers' set_adapters also lists, in a text encoder's
    # layers, adapters it lacks (a LoRA without one); peft's bookkeeping wants those left out.
    tuner.active_adapter = [name for name in layer.active_adapters if name in model.peft_config]
    return tuner


def save_merged_lora(pipe: StableDiffusionPipeline, names: Sequence[str], folder: Path,
                     combination_type: str = "cat") -> Path:
    """Write the adapters `names`, at their current weights, as one LoRA to folder/pytorch_lora_weights.safetensors
    (with its peft config, as Lora.save writes it). With "cat" (default) a stock pipeline that loads the file
    computes exactly what `pipe` computes with those adapters active; other peft combination types
    ("linear", "svd", ...) approximate it (module docstring). `pipe` is left as it was."""
    folder = Path(folder)
    layers = {}
    for component in ("unet", "text_encoder"):
        model = getattr(pipe, component)
        present = [name for name in names if name in getattr(model, "peft_config", {})]
        if not present:
            continue
        if MERGED in model.peft_config:  # add_weighted_adapter would return without merging
            raise ValueError(f"the pipeline's {component} already has an adapter named {MERGED!r}")
        try:
            # Weight 1 each: peft scales adapter k by weight * scaling[k], and set_adapters already set
            # scaling[k] = w_k alpha_k / r_k. With one adapter peft takes "linear", exact for one.
            _tuner(model).add_weighted_adapter(present, [1.0] * len(present), MERGED, combination_type=combination_type)
            state = get_peft_model_state_dict(model, adapter_name=MERGED)
            config = model.peft_config[MERGED].to_dict()
        finally:
            _delete_adapter(model, MERGED)
        layers[f"{component}_lora_layers"] = convert_state_dict_to_diffusers(state)
        # Sorted: a set's order changes from process to process (Lora.save does the same).
        layers[f"{component}_lora_adapter_metadata"] = config | {"target_modules": sorted(config["target_modules"])}
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(folder, **layers, weight_name=WEIGHTS, safe_serialization=True)
    sort_metadata(folder / WEIGHTS)
    return folder


def _delete_adapter(model, name: str) -> None:
    # What diffusers' delete_adapters does, for the UNet and the text encoder alike: for a text encoder it keeps
    # the config, and a stale config would make the next add_weighted_adapter(MERGED) return without merging.
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.delete_adapter(name)
    model.peft_config.pop(name, None)


# -------------------------------------------------------------------------------------- Textual Inversion


def embedding_token(folder: Path) -> str:
    """The token of a learned_embeds file (its one key)."""
    with safe_open(Path(folder) / EMBEDS, "pt") as f:
        keys = list(f.keys())
    if len(keys) != 1:
        raise ValueError(f"{Path(folder) / EMBEDS}: expected one token, found {keys}")
    return keys[0]


def load_embeddings(pipe: StableDiffusionPipeline, folders: Sequence[Path]) -> list[str]:
    """Add every folder's learned token to `pipe` (exact: each token keeps its own row). ValueError naming the
    folders if two hold the same token: the second would overwrite (diffusers: refuse) the first."""
    folders = [Path(f) for f in folders]
    check_distinct(folders, EMBEDS)
    tokens = [embedding_token(folder) for folder in folders]
    for i, token in enumerate(tokens):
        if token in tokens[:i]:
            raise ValueError(f"{folders[tokens.index(token)]} and {folders[i]} both learned the token {token!r}; "
                             "multi-concept runs need one identifier per concept")
    for folder in folders:
        pipe.load_textual_inversion(str(folder), weight_name=EMBEDS)
    return tokens


# -------------------------------------------------------------------------------------- Custom Diffusion


@torch.no_grad()
def text_features(pipe: StableDiffusionPipeline, captions: Sequence[str]) -> torch.Tensor:
    """Text-encoder outputs (last hidden state) of `captions`, rows [n, width], as CD's merge takes them:
    unpadded, without the start token, and without the "photo of a" positions of a caption that starts with
    them (CD's compose drops 4 positions then). CLIP's text encoder is causal, so a shared prefix encodes
    identically in every concept's prompt, and concepts with different K/V would ask contradictory outputs of
    one input; the start token's K/V are CD's detached ones anyway."""
    rows = []
    for caption in captions:
        tokens = pipe.tokenizer(caption, truncation=True, max_length=pipe.tokenizer.model_max_length).input_ids
        skip = 1 + (len(ids(pipe.tokenizer, PREFIX)) if caption.startswith(PREFIX) else 0)
        hidden = pipe.text_encoder(torch.tensor([tokens], device=pipe.text_encoder.device))[0][0]
        rows.append(hidden[skip:])
    return torch.cat(rows).float().cpu()


def concept_prompts(token: str, class_name: str) -> list[str]:
    """CD's target prompts for one concept (diffusers_composenW.py, `compose`)."""
    return [f"{token} {class_name}", f"{PREFIX} {token} {class_name}"]


def _load_kv(folder: Path, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    kv = load_file(Path(folder) / KV)
    bad = [key for key, value in kv.items() if key not in base or base[key].shape != value.shape]
    if bad:
        raise ValueError(f"{Path(folder) / KV}: {bad[0]!r} matches no parameter of this pipeline's UNet "
                         "(trained on another model.pretrained?)")
    return kv


def merge_custom_diffusion(pipe: StableDiffusionPipeline, concepts: Sequence[tuple[Path, str]], folder: Path,
                           reg_captions: Sequence[str] = REG_CAPTIONS) -> dict[str, torch.Tensor]:
    """Custom Diffusion's constrained merge of single-concept CD folders, given as (folder, class name) pairs,
    into `folder`. Every K/V layer W solves min ||R (W - W0)^T|| subject to C_i W^T = C_i W_i^T for every
    concept i: C_i the features of concept i's prompts (`concept_prompts`, every token installed), W_i its
    fine-tuned weight, R those of `reg_captions`, W0 `pipe`'s. `pipe` is the base model, best in float32 (the
    features are only as precise as the text encoder); it keeps the tokens. Solved on the CPU in float64
    (fusion.custom_diffusion_merge). Returns the merged K/V weights, float32."""
    folders = [Path(f) for f, _ in concepts]
    check_distinct(folders, KV)
    tokens = load_embeddings(pipe, folders)
    base = {key: value.detach().float().cpu() for key, value in pipe.unet.state_dict().items()}
    kvs = [_load_kv(f, base) for f in folders]
    if any(kv.keys() != kvs[0].keys() for kv in kvs):
        raise ValueError(f"{', '.join(map(str, folders))}: their {KV} files hold different layers")
    reg = text_features(pipe, reg_captions)
    # Checked here, at float32's resolution (the features'): fusion's Cholesky in float64 lets a singular S
    # through when rounding makes it barely positive, and then the merge misses its constraints by ~10%.
    rank, width = int(torch.linalg.matrix_rank(reg)), reg.shape[1]
    if rank < width:
        raise ValueError(f"the {len(reg_captions)} regularisation captions' features span rank {rank} < text width "
                         f"{width}: CD's S = R^T R is singular. Use more captions (CD: 200), and a text encoder "
                         "whose final LayerNorm has a bias (without one, as in the random-init tiny model, every "
                         "feature sums to zero)")
    features = [text_features(pipe, concept_prompts(token, class_name))
                for token, (_, class_name) in zip(tokens, concepts)]
    merged = {key: custom_diffusion_merge(base[key], reg, [concept_targets(kv[key].float(), c)
                                                           for kv, c in zip(kvs, features)]).contiguous()
              for key in sorted(kvs[0])}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(merged, folder / KV, metadata={"format": "pt"})
    for i, source in enumerate(folders):
        shutil.copyfile(source / EMBEDS, folder / f"learned_embeds_{i}.safetensors")
    return merged


def load_merged_custom_diffusion(pipe: StableDiffusionPipeline, folder: Path) -> None:
    """Apply a merged CD folder to a stock pipeline: every concept's token, then the merged K/V."""
    folder = Path(folder)
    pipe.load_textual_inversion([str(p) for p in sorted(folder.glob("learned_embeds_*.safetensors"))])
    unexpected = pipe.unet.load_state_dict(load_file(folder / KV), strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"{folder / KV}: {unexpected[0]!r} matches no UNet parameter (another model.pretrained?)")


# -------------------------------------------------------------------------------------- the merge stage


def compose_embeddings(folders: Sequence[Path], folder: Path) -> None:
    """Textual Inversion's composition: each folder's token file side by side, learned_embeds_<i>.safetensors
    (the layout the method's loader reads for several tokens), refused if two learned the same token."""
    folders = [Path(f) for f in folders]
    check_distinct(folders, EMBEDS)
    tokens = [embedding_token(f) for f in folders]
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"{', '.join(map(str, folders))} learned the same token ({tokens}): "
                         "multi-concept runs need one identifier per concept")
    folder.mkdir(parents=True, exist_ok=True)
    for i, source in enumerate(folders):
        shutil.copyfile(source / EMBEDS, folder / f"learned_embeds_{i}.safetensors")


def merge_models(variant: str, pipe: StableDiffusionPipeline, concepts: Sequence[tuple[Path, str]],
                 folder: Path) -> None:
    """Write `variant` (params.MERGED_FROM) of the single-concept models `concepts` ((folder, class name) each)
    to `folder`, in the format of its method: the merged model loads as a single-concept one does. `pipe` is the
    base model, float32."""
    folders = [Path(f) for f, _ in concepts]
    if variant in ("lora_sum", "lora_average", "orthogonal_sum"):
        save_merged_lora(pipe, load_loras(pipe, folders, variant.rpartition("_")[2]), folder)
    elif variant == "custom_diffusion_merge":
        merge_custom_diffusion(pipe, concepts, folder)
    elif variant == "textual_inversion_compose":
        compose_embeddings(folders, folder)
    else:
        raise ValueError(f"{variant!r} is not a merge of merge_models (valid: "
                         f"{', '.join(v for v in MERGED_FROM if v != FUSION)}; {FUSION}: {FUSION_MODULE})")
