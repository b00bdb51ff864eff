"""Mix-of-Show's gradient fusion of single-concept ED-LoRA models into one (the multi-concept study's
`edlora_fusion`), in MoS's three steps (`multi.gradient_fusion`, whose docstring has the references): every
concept's layer-wise tokens installed; (1) the text encoder's LoRA layers fitted on each concept's prompts;
(2) the UNet's cross-attention K/V on the fused text encoder's features of them; (3) the UNet's other LoRA
layers on one 20-step sample of "photo of a <c>" from each concept's model with the fused K/V. Each concept
is a named diffusers adapter of one pipeline (`load_lora_weights(..., adapter_name=)`, `set_adapters`), so
the concepts' models share the base weights. Per layer, `multi.fusion.fuse_layer` solves with
`multi.fusion` params' solver.

The folder written: fused_weights.safetensors (each fused layer's full weight, float32, keyed
"unet.<layer>.weight" and "text_encoder.<layer>.weight") and edlora_embeddings.safetensors (every concept's
layer tokens), which `methods.edlora.EdLora.load_into` applies to a stock pipeline.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
from safetensors.torch import load_file, save_file

from dreamstudy.methods.edlora import EMBEDDINGS, FUSED
from dreamstudy.methods.lora import WEIGHTS
from dreamstudy.multi.edlora import LayerwiseToken, add_saved_concepts, concept_rows, encode_layerwise
from dreamstudy.multi.fusion import MOS_TEXT_ITERS, MOS_UNET_ITERS
from dreamstudy.multi.gradient_fusion import (
    Concept,
    fuse,
    is_kv,
    kv_run,
    lora_layers,
    prompt_run,
    sample_run,
    weights_applied,
)
from dreamstudy.multi.merge import adapter_names
from dreamstudy.seeding import derive_seed

TEMPLATES = ("photo of a {}", "{}")  # MoS's two prompts per concept (steps 1 and 2); step 3 samples the first
SAMPLE_STEPS = 20  # MoS's step 3: 20 DPM-Solver steps, batch 1, no guidance, every step recorded


def load_concepts(pipe: StableDiffusionPipeline, folders: Sequence[Path]) -> list[LayerwiseToken]:
    """Every folder's layer tokens into `pipe` (a concept word learned twice is refused, naming the folders)."""
    concepts = []
    for folder in folders:
        path = Path(folder) / EMBEDDINGS
        try:
            concepts += add_saved_concepts(pipe.tokenizer, pipe.text_encoder, load_file(path), str(path))
        except ValueError as err:
            raise ValueError(f"fusing {', '.join(map(str, folders))}: {err} (one identifier per concept)") from err
    return concepts


def solver_options(solver: str, iters: int) -> dict:
    return {"iters": iters} if solver == "lbfgs" else {}


def fuse_edloras(pipe: StableDiffusionPipeline, folders: Sequence[Path], out: Path, *, solver: str = "closed_form",
                 text_iters: int = MOS_TEXT_ITERS, unet_iters: int = MOS_UNET_ITERS, seed: int = 0,
                 resolution: int | None = None) -> None:
    """Fuse the ED-LoRA models in `folders` (one concept each) on the base pipeline `pipe` (float32; it is left
    with the concepts' tokens and adapters) and write the fused model to `out`. `resolution`: of step 3's
    samples (default: the UNet's); `seed` seeds them, one per concept."""
    folders = [Path(f) for f in folders]
    concepts = load_concepts(pipe, folders)
    if len(concepts) != len(folders):
        raise ValueError(f"{', '.join(map(str, folders))}: expected one concept per folder, found "
                         f"{[c.token for c in concepts]}")
    num_layers = len(concepts[0].tokens)
    base_text_encoder, base_unet = copy.deepcopy(pipe.text_encoder), copy.deepcopy(pipe.unet)
    names = adapter_names(len(folders))
    for folder, name in zip(folders, names):
        pipe.load_lora_weights(folder, weight_name=WEIGHTS, adapter_name=name)

    def as_concept(i: int, model, run) -> Concept:
        def run_concept(module):
            pipe.set_adapters(names[i])  # concept i's model: its LoRA alone, at weight 1
            run(module)
        return Concept(model, run_concept)

    prompts = [[template.format(c.token) for template in TEMPLATES] for c in concepts]
    text_layers, unet_layers = lora_layers(pipe.text_encoder), lora_layers(pipe.unet)
    kv = [name for name in unet_layers if is_kv(name)]
    others = [name for name in unet_layers if not is_kv(name)]

    # 1. the text encoder, on each concept's prompts bound to each of its layer tokens
    text_concepts = [as_concept(i, pipe.text_encoder, prompt_run(pipe.tokenizer, [c.bind(p, layer) for p in prompts[i]
                                                                                  for layer in range(num_layers)]))
                     for i, c in enumerate(concepts)]
    text_encoder = fuse(base_text_encoder, text_concepts, text_layers, solver, in_place=True,
                        **solver_options(solver, text_iters))
    # 2. K/V, on the fused text encoder's features of the same prompts (their concept token and EOS positions)
    kv_concepts = [as_concept(i, pipe.unet, kv_run(pipe.tokenizer, text_encoder, prompts[i], [c]))
                   for i, c in enumerate(concepts)]
    kv_unet = fuse(base_unet, kv_concepts, kv, solver, in_place=True, **solver_options(solver, text_iters))
    # 3. the other layers, on a sample from each concept's model with the fused K/V
    scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    latent_size = (resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor) // pipe.vae_scale_factor
    with torch.no_grad():
        contexts = [encode_layerwise(pipe.tokenizer, text_encoder, [prompts[i][0]], [c], num_layers)
                    for i, c in enumerate(concepts)]

    def sampled(i: int):
        sample = sample_run(scheduler, contexts[i], tokens=pipe.tokenizer.model_max_length, steps=SAMPLE_STEPS,
                            seed=derive_seed(seed, "fusion", concepts[i].token), latent_size=latent_size)

        def run(unet):
            with weights_applied(unet, kv_unet, kv):
                sample(unet)
        return run

    spatial = [as_concept(i, pipe.unet, sampled(i)) for i in range(len(concepts))]
    # in place too: step 3's runs read kv_unet's K/V, which it leaves as they are
    unet = fuse(kv_unet, spatial, others, solver, in_place=True, **solver_options(solver, unet_iters))

    modules = {"text_encoder": dict(text_encoder.named_modules()), "unet": dict(unet.named_modules())}
    weights = {f"{part}.{name}.weight": modules[part][name].weight.detach().float().cpu().contiguous()
               for part, layers in (("text_encoder", text_layers), ("unet", unet_layers)) for name in layers}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, out / FUSED, metadata={"format": "pt"})
    save_file(concept_rows(pipe.text_encoder, concepts), out / EMBEDDINGS, metadata={"format": "pt"})
