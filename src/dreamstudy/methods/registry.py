"""Personalization methods by name. A method says which parameters train, how they are initialised,
saved and loaded; the one training loop (`trainer.py`) serves them all. A new method is one module
that calls `register` with a factory from the `train` params section, plus its line in MODULES: a stage
imports the module of its own method only, so that its code dependencies are exactly that module and the
shared ones (dreamstudy.dag)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch


@dataclass(frozen=True)
class Schedule:
    """Optimisation settings of one method, from its params section."""

    lr: float
    steps: int
    batch_size: int
    prior_preservation: bool = False

    @classmethod
    def of(cls, section) -> "Schedule":
        """From a method's params section (dreamstudy.params.MethodParams)."""
        return cls(section.lr, section.steps, section.batch_size, section.prior_preservation)


def tokenize(tokenizer, captions: Sequence[str]) -> torch.Tensor:
    """Token ids [B, L] of `captions`, padded to the tokenizer's length, as the stock pipeline pads them."""
    return tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


class PlainText:
    """How a caption conditions the UNet in every stock method: one row of token ids, the text encoder's last
    hidden state. A method that conditions otherwise (ED-LoRA's layer-wise embeddings) overrides both."""

    def input_ids(self, tokenizer, captions: Sequence[str]) -> torch.Tensor:
        return tokenize(tokenizer, captions)

    def encode_text(self, text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
        return text_encoder(input_ids)[0]


class Method(Protocol):
    # True when the text encoder (or its input embeddings) train: captions are then encoded every step.
    trains_text_encoder: bool

    def input_ids(self, tokenizer, captions: Sequence[str]) -> torch.Tensor:
        """The token ids of `captions`, one row per caption (PlainText's, or a method's own)."""

    def encode_text(self, text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
        """What the UNet's cross-attention reads for rows of `input_ids`: [B, tokens, D]."""

    def token(self, identifier: str) -> str:
        """The word that stands for the subject in captions and prompts (e.g. "sks", "<sks>")."""

    def check(self, tokenizer, token: str) -> None:
        """Refuse, from the tokenizer alone (before any model loads), a token this method cannot train."""

    def prepare(self, parts, tokens: Sequence[str], class_names: Sequence[str]) -> list[torch.nn.Parameter | dict]:
        """Adapt `parts` (models.loading.Components) in place for the concepts whose words are `tokens`, of
        the classes `class_names` (one per concept, jointly trained where there are several); return the
        parameters to train, or torch optimizer parameter groups ({"params": [...], "lr": ...}) where some
        train at a learning rate of their own.

        Called after every model is frozen; a method unfreezes or adds what it trains."""

    def after_step(self, parts) -> None:
        """Undo what the optimizer may not change (e.g. embedding rows other than the new token's)."""

    def save(self, parts, folder: Path) -> None:
        """Write the trained artefact (safetensors, in a layout stock diffusers loads) into `folder`."""

    def load_into(self, pipe, folder: Path) -> None:
        """Apply an artefact written by `save` to a stock StableDiffusionPipeline."""


MethodFactory = Callable[[object], tuple[Method, Schedule]]
MODULES = {name: f"dreamstudy.methods.{name}" for name in
           ("dreambooth", "lora", "textual_inversion", "custom_diffusion", "edlora", "orthogonal")}
METHODS: dict[str, MethodFactory] = {}


def register(name: str) -> Callable[[MethodFactory], MethodFactory]:
    def add(factory: MethodFactory) -> MethodFactory:
        METHODS[name] = factory
        return factory
    return add


def method_module(name: str):
    try:
        return importlib.import_module(MODULES[name])
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid: {sorted(MODULES)}") from None


def get_method(name: str, train_params) -> tuple[Method, Schedule]:
    if name not in METHODS:
        method_module(name)
    return METHODS[name](train_params)
