"""Textual Inversion (Gal et al. 2022): one new token's embedding learns the subject, nothing else
changes. As diffusers' examples/textual_inversion/textual_inversion.py, except that the placeholder is
initialised from the class noun (averaged over its tokens) and captions are the study's own. The token's
training, saving and loading are tokens.NewToken's (Custom Diffusion's too)."""

from __future__ import annotations

from dreamstudy.methods.registry import Schedule, register
from dreamstudy.methods.tokens import NewToken


@register("textual_inversion")
def textual_inversion_from_params(train_params) -> tuple[NewToken, Schedule]:
    return NewToken(), Schedule.of(train_params.textual_inversion)
