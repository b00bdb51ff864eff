"""A new placeholder token ("<sks>") with one trainable embedding row, as in diffusers'
textual_inversion.py; Textual Inversion and Custom Diffusion both use it.

The whole input-embedding matrix is the trainable parameter (that is what the text encoder looks up);
a gradient mask keeps the other rows out of gradient clipping, and `restore` puts them back after each
optimizer step (AdamW's weight decay moves every row, gradient or not). The row is saved as
{token: tensor[1, D]} in learned_embeds.safetensors, the file `load_textual_inversion` reads.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

EMBEDS = "learned_embeds.safetensors"  # textual_inversion.py's file name
CONTEXT = "a photo of"  # a caption prefix: the token must add exactly its own id after it


def placeholder(identifier: str) -> str:
    """A token that is no word of CLIP's vocabulary ("sks" is one, as "sks</w>")."""
    return f"<{identifier}>"


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def add_token(tokenizer, token: str) -> int:
    """Add `token` to `tokenizer` and return its id; ValueError (naming train.identifier) if it is an
    existing token or word, or if the tokenizer would not read it back as that one id."""
    if token in tokenizer.get_vocab() or len(ids(tokenizer, token)) == 1:
        raise ValueError(f"placeholder token {token!r} (from train.identifier) is already in the tokenizer's "
                         "vocabulary; choose another train.identifier")
    expected = ids(tokenizer, CONTEXT)
    tokenizer.add_tokens(token)
    token_id = tokenizer.convert_tokens_to_ids(token)
    if ids(tokenizer, f"{CONTEXT} {token}") != [*expected, token_id]:
        raise ValueError(f"placeholder token {token!r} (from train.identifier) does not stay one token "
                         "when added to the tokenizer; choose another train.identifier")
    return token_id


def check_token(tokenizer, token: str) -> None:
    """add_token's checks on a copy of `tokenizer`: run them before any model loads."""
    add_token(copy.deepcopy(tokenizer), token)


def class_embedding(tokenizer, embeddings: torch.Tensor, class_name: str) -> torch.Tensor:
    """The class noun's embedding, averaged over its tokens ("stuffed animal" has two)."""
    class_ids = ids(tokenizer, class_name)
    if not class_ids:
        raise ValueError(f"class name {class_name!r} has no tokens to initialise the placeholder from")
    return embeddings[class_ids].mean(dim=0)


@dataclass
class LearnedToken:
    """The placeholder's row of the text encoder's input embeddings, and a copy of the matrix to restore."""

    token: str
    id: int
    original: torch.Tensor

    @classmethod
    def add(cls, parts, token: str, class_name: str) -> "LearnedToken":
        """Add `token` to parts.tokenizer and parts.text_encoder, its row set to the class noun's embedding."""
        token_id = add_token(parts.tokenizer, token)
        # mean_resizing would fit a Gaussian to the whole matrix for a row that is overwritten next.
        parts.text_encoder.resize_token_embeddings(len(parts.tokenizer), mean_resizing=False)
        weight = parts.text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            weight[token_id] = class_embedding(parts.tokenizer, weight, class_name)
        weight.requires_grad_(True)
        learned = cls(token, token_id, weight.detach().clone())
        weight.register_hook(learned.mask_gradient)
        return learned

    def mask_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradient of this row only, so that clipping sees nothing else."""
        mask = torch.zeros(len(grad), 1, device=grad.device, dtype=grad.dtype)
        mask[self.id] = 1
        return grad * mask

    @staticmethod
    def weight(parts) -> torch.nn.Parameter:
        return parts.text_encoder.get_input_embeddings().weight

    def restore(self, parts) -> None:
        """Every row but the placeholder's back to its value before training."""
        weight = self.weight(parts)
        self.original = self.original.to(weight.device)  # once: the trainer moves the model after `add`
        with torch.no_grad():
            row = weight[self.id].clone()
            weight.copy_(self.original)
            weight[self.id] = row

    def save(self, parts, folder: Path) -> None:
        row = self.weight(parts)[self.id : self.id + 1].detach().cpu().contiguous()
        save_file({self.token: row}, Path(folder) / EMBEDS, metadata={"format": "pt"})


def load_token(pipe, folder: Path) -> None:
    """Add the saved placeholder (the file's one key) to a stock pipeline."""
    pipe.load_textual_inversion(str(folder), weight_name=EMBEDS)


class NewToken:
    """A method whose trainable part includes the placeholder's embedding row (Textual Inversion, and
    Custom Diffusion beside its K/V weights)."""

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
