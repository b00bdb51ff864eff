"""Orthogonal Adaptation (Po et al., "Orthogonal Adaptation for Modular Customization of Diffusion Models",
CVPR 2024; no official code found): LoRA on the UNet's attention whose down-projections A are frozen to rows
of one orthogonal matrix per layer, the same matrix for every subject, each subject's rows fixed by its place
among DreamBench's 30 subjects; only B trains. Any two subjects' adapters then read orthogonal subspaces of a
layer's input, so their plain sum (the merge `orthogonal_sum`) acts on an input in one subject's subspace
exactly as that subject's adapter alone. Saved as a LoRA: stock `load_lora_weights` loads it.

A subject's rows are rank x its place, so every layer needs 30 x rank input features: SD 1.5's narrowest
attention input is 320 (rank <= 10), the tiny model's 32 (rank 1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from peft.tuners.lora import LoraLayer

from dreamstudy.data.dreambench import SUBJECTS
from dreamstudy.methods.lora import ADAPTER, UNET_TARGETS, Lora
from dreamstudy.methods.registry import Schedule, register
from dreamstudy.seeding import derive_seed

SLOTS = {subject: slot for slot, subject in enumerate(SUBJECTS)}  # a subject's place among DreamBench's 30


def basis(size: int, seed: int, layer: str) -> torch.Tensor:
    """An orthogonal size x size matrix drawn from `seed` and the layer's name: every subject's adapter of that
    layer is cut from it."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "orthogonal basis", layer))
    return torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64)).Q.float()


def subject_rows(slot: int, rank: int) -> slice:
    return slice(slot * rank, (slot + 1) * rank)


@dataclass(frozen=True)
class Orthogonal(Lora):
    basis_seed: int = 0
    slots: Mapping[str, int] = field(default_factory=dict)  # token (the subject's identifier) -> its slot

    def check(self, tokenizer, token: str) -> None:
        if token not in self.slots:
            raise ValueError(f"{token!r} is no identifier of train.identifiers: Orthogonal Adaptation takes a "
                             "subject's rows from its place among DreamBench's subjects")

    def prepare(self, parts, tokens: Sequence[str], class_names: Sequence[str]) -> list[torch.nn.Parameter]:
        # Several subjects trained jointly: one adapter over all their rows, at each subject's scale alpha / rank.
        count = len(tokens)
        parts.unet.add_adapter(Lora(self.rank * count, self.alpha * count).config(UNET_TARGETS))
        for name, layer in parts.unet.named_modules():
            if not isinstance(layer, LoraLayer):
                continue
            down = layer.lora_A[ADAPTER].weight
            if len(SLOTS) * self.rank > down.shape[1]:
                raise ValueError(f"train.orthogonal.rank {self.rank}: {len(SLOTS)} subjects x {self.rank} rows exceed "
                                 f"the {down.shape[1]} input features of {name}; at most rank "
                                 f"{down.shape[1] // len(SLOTS)} on this model")
            rows = basis(down.shape[1], self.basis_seed, name)
            with torch.no_grad():
                down.copy_(torch.cat([rows[subject_rows(self.slots[t], self.rank)] for t in tokens]))
            down.requires_grad_(False)
        return [p for p in parts.unet.parameters() if p.requires_grad]


@register("orthogonal")
def orthogonal_from_params(train_params) -> tuple[Orthogonal, Schedule]:
    p = train_params.orthogonal
    # the identifiers this stage may read (its subjects'; every subject's where all are visible)
    slots = {identifier: SLOTS[subject] for subject, identifier in train_params.identifiers.items()}
    return Orthogonal(rank=p.rank, alpha=p.alpha, basis_seed=p.basis_seed, slots=slots), Schedule.of(p)
