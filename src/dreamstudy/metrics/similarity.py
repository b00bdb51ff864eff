"""Cosine similarities between embeddings, and the text that CLIP-T scores."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F


def remove_identifier(prompt: str, identifier: str) -> str:
    """'a sks dog in the jungle' -> 'a dog in the jungle': CLIP-T scores the prompt without the rare token."""
    if not identifier.strip():
        raise ValueError(f"identifier must be non-empty (prompt {prompt!r})")
    # Whole words only ('sks' leaves 'asks' alone); lookarounds also work for identifiers like '<sks>'.
    without = re.sub(rf"(?<!\w){re.escape(identifier)}(?!\w)", " ", prompt)
    return " ".join(without.split())


def pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, D] x [M, D] -> [N, M] cosine similarities."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected [N, D] and [M, D] embeddings (got {tuple(a.shape)} and {tuple(b.shape)})")
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def mean_pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine over all N x M pairs: DreamBench's DINO and CLIP-I for one subject."""
    return pairwise_cosine(a, b).mean().item()
