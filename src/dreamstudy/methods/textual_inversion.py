"""Textual Inversion (Gal et al. 2022): one new token's embedding learns the subject, nothing else
changes. As diffusers' examples/textual_inversion/textual_inversion.py, except that the placeholder is
initialised from the class noun (averaged over its tokens) and captions are the study's own."""

from __future__ import annotations

from pathlib import Path

import torch

from dreamstudy.methods.registry import Schedule, register
from dreamstudy.methods.tokens import LearnedToken, check_token, load_token, placeholder


class TextualInversion:
    # The embedding row trains, so captions go through the text encoder every step.
    trains_text_encoder = True

    def __init__(self) -> None:
        self.learned: LearnedToken | None = None  # set by prepare

    def token(self, identifier: str) -> str:
        return placeholder(identifier)

    def check(self, tokenizer, token: str) -> None:
        check_token(tokenizer, token)

    def prepare(self, parts, token: str, class_name: str) -> list[torch.nn.Parameter]:
        self.learned = LearnedToken.add(parts, token, class_name)
        return [LearnedToken.weight(parts)]

    def after_step(self, parts) -> None:
        self.learned.restore(parts)

    def save(self, parts, folder: Path) -> None:
        self.learned.save(parts, folder)

    def load_into(self, pipe, folder: Path) -> None:
        load_token(pipe, folder)


@register("textual_inversion")
def textual_inversion_from_params(train_params) -> tuple[TextualInversion, Schedule]:
    return TextualInversion(), Schedule.of(train_params.textual_inversion)
