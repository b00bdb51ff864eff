"""Mix-of-Show's gradient fusion over whole models (Gu et al., NeurIPS 2023; github:TencentARC/Mix-of-Show,
`gradient_fusion.py`: `compose_concepts`, `merge_text_encoder`, `merge_kv_in_cross_attention`,
`merge_spatial_attention`), with the per-layer math of `fusion.fuse_layer`. Our code, not theirs.

`fuse` takes a plain base model and, per concept, that concept's model (the base with its LoRA: peft
adapters, active, or weights already merged) and a `run` callable that feeds the model the concept's data.
Forward pre-hooks on every target linear layer stream the layer's inputs into one
`fusion.GramAccumulator` per concept and layer (the closed form needs no activation kept); right after
concept i's run, each layer's effective weight W_i = W0 + dW_i is read (held per concept and layer: the
Gram [in, in], float64, and W_i [out, in]). Every layer is then solved by
`fuse_layer` and written into a deep copy of the base. Solver "lbfgs" (MoS's) needs the activations
themselves: it then KEEPS every input row of every layer, on the CPU (as MoS does), which at SD 1.5 scale
is gigabytes per concept.

MoS's order, one `fuse` per stage, each stage's concepts' data from the runners below:
1. text encoder, every LoRA layer: `prompt_run` on "photo of a <c>" and "<c>", bound to each of the N
   layer tokens (`edlora.bind_prompts`), with every concept's layer-wise tokens installed;
2. UNet cross-attention K/V (`is_kv`): `kv_run`, the FUSED text encoder's features of the same prompts at
   the concept's token and EOS positions, layer i's bound prompts for layer i;
3. every other UNet LoRA layer: `sample_run`, one sample of "photo of a <c>" from the concept's model
   (MoS: the fused text encoder, the fused K/V (`weights_applied`), concept i's other layers; batch 1, no
   guidance, 20 DPM-Solver steps, all 20 steps recorded).
MoS's LBFGS iterations (500 for 1-2, 50 for 3) are `fusion.MOS_TEXT_ITERS`, `fusion.MOS_UNET_ITERS`.
Left out: MoS's Conv2d LoRA layers (our adapters are linear only), its fp16 model (ours runs in the
models' dtype, Grams in float64), and its concept-config files.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from dreamstudy.multi.edlora import LayerwiseToken, cross_attention_layers, layerwise
from dreamstudy.multi.fusion import ConceptLayer, GramAccumulator, fuse_layer

KV = ("attn2.to_k", "attn2.to_v")


@dataclass
class Concept:
    """A concept's model and how to run it on the concept's data. One module may serve several concepts
    if `run` switches its active adapter first: weights are read right after each run."""

    model: nn.Module
    run: Callable[[nn.Module], object]


def lora_layers(model: nn.Module) -> list[str]:
    """Names of `model`'s linear layers that carry peft LoRA adapters."""
    return [name for name, module in model.named_modules()
            if isinstance(module, LoraLayer) and isinstance(module.get_base_layer(), nn.Linear)]


def is_kv(name: str) -> bool:
    """A cross-attention key or value projection: its inputs are text features only."""
    return name.endswith(KV)


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight [out, in] a linear layer applies now: W0 plus its active LoRA deltas (peft), or its own."""
    if not isinstance(module, LoraLayer):
        return module.weight.detach().clone()
    weight = module.get_base_layer().weight.detach().clone()
    if module.disable_adapters or module.merged:  # merged: the base weight already holds the deltas
        return weight
    for name in module.active_adapters:
        if name in module.lora_variant:
            raise ValueError(f"adapter {name!r} is a LoRA variant (e.g. DoRA): its weight is not W0 + B A")
        if name in module.lora_A:
            weight += module.get_delta_weight(name).to(weight.dtype)
    return weight


@contextlib.contextmanager
def weights_applied(model: nn.Module, source: nn.Module, names: Sequence[str]) -> Iterator[nn.Module]:
    """Within the block, `model`'s layers `names` apply `source`'s weights (MoS's stage 3 samples each
    concept with the fused K/V): a LoRA layer's base weight becomes source's weight minus its active
    deltas, a plain layer's becomes source's. The base weights are put back afterwards."""
    modules, sources = dict(model.named_modules()), dict(source.named_modules())
    saved = {}
    try:
        with torch.no_grad():
            for name in names:
                module = modules[name]
                base = module.get_base_layer() if isinstance(module, LoraLayer) else module
                saved[name] = base.weight.detach().clone()
                delta = effective_weight(module) - saved[name]
                base.weight.copy_(sources[name].weight.to(delta) - delta)
        yield model
    finally:
        with torch.no_grad():
            for name, weight in saved.items():
                module = modules[name]
                (module.get_base_layer() if isinstance(module, LoraLayer) else module).weight.copy_(weight)


class ActivationRecorder:
    """Forward pre-hooks on `names` of `model`, for a `with` block: each call's input x [..., in] is
    added to the layer's GramAccumulator (`grams`) and let go; with keep_inputs, its rows are also kept
    on the CPU (`inputs`, for LBFGS). The hooks are removed when the block ends, error or not."""

    def __init__(self, model: nn.Module, names: Sequence[str], keep_inputs: bool = False,
                 dtype: torch.dtype = torch.float64):
        modules = dict(model.named_modules())
        missing = [name for name in names if name not in modules]
        if missing:
            raise ValueError(f"no such layers in the model: {missing}")
        self.modules = {name: modules[name] for name in names}
        self.dtype = dtype
        self.grams: dict[str, GramAccumulator] = {}
        self.inputs: dict[str, list[torch.Tensor]] | None = {name: [] for name in names} if keep_inputs else None
        self.handles = []

    def hook(self, name: str):
        def record(module, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            if name not in self.grams:
                self.grams[name] = GramAccumulator(x.shape[-1], dtype=self.dtype, device=x.device)
            self.grams[name].update(x)
            if self.inputs is not None:
                self.inputs[name].append(x.detach().reshape(-1, x.shape[-1]).cpu())
        return record

    def __enter__(self) -> ActivationRecorder:
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_pre_hook(self.hook(name), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def record_concept(concept: Concept, names: Sequence[str], keep_inputs: bool = False,
                   dtype: torch.dtype = torch.float64) -> dict[str, ConceptLayer]:
    """Run the concept under the hooks, then read its layers' weights: {name: ConceptLayer}."""
    with ActivationRecorder(concept.model, names, keep_inputs, dtype) as recorder, torch.no_grad():
        concept.run(concept.model)
    unseen = [name for name in names if name not in recorder.grams]
    if unseen:
        raise ValueError(f"the concept's run never called these layers: {unseen}")
    return {name: ConceptLayer(weight=effective_weight(module), gram=recorder.grams[name],
                               inputs=torch.cat(recorder.inputs[name]) if keep_inputs else None)
            for name, module in recorder.modules.items()}


def fuse(base: nn.Module, concepts: Sequence[Concept], layers: Sequence[str] | None = None,
         solver: str = "closed_form", gram_dtype: torch.dtype = torch.float64, in_place: bool = False,
         **options) -> nn.Module:
    """A deep copy of `base` (plain: no adapters) whose `layers` (default: every layer that carries LoRA in
    some concept's model) hold the gradient-fused weights of `concepts`; the rest is the base's. `in_place`:
    `base` itself, for a caller that owns it (a model copy less: 3.4 GB for SD 1.5's UNet in float32); it is
    written only once every concept has run. `solver`, `options`: `fusion.fuse_layer`'s ("closed_form": Grams
    only; "lbfgs": keeps activations)."""
    if not concepts:
        raise ValueError("no concepts to fuse")
    names = list(layers) if layers is not None else sorted({n for c in concepts for n in lora_layers(c.model)})
    if not names:
        raise ValueError("no layers to fuse: no concept's model carries LoRA layers, and none were named")
    recorded = [record_concept(c, names, keep_inputs=solver == "lbfgs", dtype=gram_dtype) for c in concepts]
    modules = dict(base.named_modules())
    for name in names:  # all checked before any is written
        if type(modules.get(name)) is not nn.Linear:
            raise ValueError(f"layer {name!r} of the base model is {type(modules.get(name)).__name__}, not a plain "
                             "nn.Linear")
    fused = base if in_place else copy.deepcopy(base)
    modules = dict(fused.named_modules())
    for name in names:
        layer = modules[name]
        weight = fuse_layer(layer.weight.detach(), [r[name] for r in recorded], solver=solver, **options)
        with torch.no_grad():
            layer.weight.copy_(weight)
    return fused


def _ids(tokenizer, prompt: str, device) -> torch.Tensor:
    """One prompt's ids, unpadded (padding would add rows of EOS features to every Gram), [1, T]."""
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    return torch.tensor([ids], device=device)


def prompt_run(tokenizer, prompts: Sequence[str]) -> Callable[[nn.Module], None]:
    """Stage 1's data: a text encoder's run over `prompts` (bound to every layer token already), one
    prompt at a time, unpadded (MoS's `get_text_feature(..., 'category_embedding')` tokenizes so)."""
    def run(text_encoder):
        for prompt in prompts:
            text_encoder(_ids(tokenizer, prompt, text_encoder.device))
    return run


def kv_run(tokenizer, text_encoder, prompts: Sequence[str], concepts: Sequence[LayerwiseToken]
           ) -> Callable[[nn.Module], None]:
    """Stage 2's data: for cross-attention layer i, `text_encoder`'s (the fused one's) features of `prompts`
    bound to layer i, at the concepts' token and EOS positions (MoS: ids >= 49407), fed straight into
    attn2.to_k and attn2.to_v: their inputs depend on the text alone, so no UNet pass is needed."""
    def run(unet):
        for i, (_, attn) in enumerate(cross_attention_layers(unet)):
            keep_ids = {c.ids[i] for c in concepts} | {tokenizer.eos_token_id}
            rows = []
            for prompt in prompts:
                for concept in concepts:
                    prompt = concept.bind(prompt, i)
                ids = _ids(tokenizer, prompt, text_encoder.device)
                keep = torch.tensor([t in keep_ids for t in ids[0].tolist()], device=ids.device)
                rows.append(text_encoder(ids)[0][0, keep])
            rows = torch.cat(rows).to(attn.to_k.weight.device, attn.to_k.weight.dtype)
            attn.to_k(rows)
            attn.to_v(rows)
    return run


def sample_run(scheduler, embeddings: torch.Tensor, tokens: int, steps: int = 20, seed: int = 0,
               latent_size: int | None = None) -> Callable[[nn.Module], None]:
    """Stage 3's data: sampling from noise (a copy of `scheduler`, `steps` steps, no guidance) conditioned on
    `embeddings`, layer-wise [B, N * tokens, D] (`edlora.encode_layerwise` of "photo of a <c>") or plain
    [B, tokens, D]; every step's activations are seen (MoS's `decode_to_latents`, record_nums = steps)."""
    def run(unet):
        schedule = copy.deepcopy(scheduler)
        schedule.set_timesteps(steps)
        size = latent_size or unet.config.sample_size
        shape = (embeddings.shape[0], unet.config.in_channels, size, size)
        latents = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        latents = latents.to(unet.device, unet.dtype) * schedule.init_noise_sigma
        context = embeddings.to(unet.device, unet.dtype)
        with layerwise(unet, tokens):
            for t in schedule.timesteps:
                noise = unet(schedule.scale_model_input(latents, t), t, context).sample
                latents = schedule.step(noise, t, latents).prev_sample
    return run
