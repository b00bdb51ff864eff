"""Cosine similarities between embeddings, and the text that CLIP-T scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dreamstudy.text import replace_identifier


def remove_identifier(prompt: str, identifier: str) -> str:
    """'a sks dog in the jungle' -> 'a dog in the jungle': CLIP-T scores the prompt without the rare token."""
    if not identifier.strip():
        raise ValueError(f"identifier must be non-empty (prompt {prompt!r})")
    without = replace_identifier(prompt, identifier, " ")
    return " ".join(without.split())


def pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, D] x [M, D] -> [N, M] cosine similarities."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected [N, D] and [M, D] embeddings (got {tuple(a.shape)} and {tuple(b.shape)})")
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def mean_pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine over all N x M pairs: DreamBench's DINO and CLIP-I for one subject."""
    return pairwise_cosine(a, b).mean().item()


def nearest_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, D] x [M, D] -> [N]: each row of `a`'s highest cosine to any row of `b` (its closest match)."""
    return pairwise_cosine(a, b).max(dim=1).values


def mean_self_cosine(a: torch.Tensor) -> float:
    """Mean cosine over the pairs i != j of `a`'s rows; NaN with fewer than 2 rows."""
    n = len(a)
    if n < 2:
        return float("nan")
    cosines = pairwise_cosine(a, a)
    return ((cosines.sum() - cosines.diagonal().sum()) / (n * (n - 1))).item()
