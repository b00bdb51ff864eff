"""New placeholder tokens ("<sks>"), one per concept, each with one trainable embedding row, as in diffusers'
textual_inversion.py (and train_custom_diffusion.py's `--modifier_token "<new1>+<new2>"` for several);
Textual Inversion and Custom Diffusion both use them.

The whole input-embedding matrix is the trainable parameter (that is what the text encoder looks up);
a gradient mask keeps the other rows out of gradient clipping, and `restore` puts them back after each
optimizer step (AdamW's weight decay moves every row, gradient or not). A row is saved as
{token: tensor[1, D]} in learned_embeds.safetensors, the file `load_textual_inversion` reads; several
tokens (concepts trained jointly) in one such file each, learned_embeds_<i>.safetensors, as
dreamstudy.multi.merge numbers them: `load_textual_inversion` reads one token a file.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from dreamstudy.methods.registry import PlainText

EMBEDS = "learned_embeds.safetensors"  # textual_inversion.py's file name
CONTEXT = "a photo of"  # a caption prefix: the token must add exactly its own id after it


def placeholder(identifier: str) -> str:
    """A token that is no word of CLIP's vocabulary ("sks" is one, as "sks</w>")."""
    return f"<{identifier}>"


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def add_token(tokenizer, token: str) -> int:
    """Add `token` to `tokenizer` and return its id; ValueError (naming train.identifiers) if it is an
    existing token or word, or if the tokenizer would not read it back as that one id."""
    if token in tokenizer.get_vocab() or len(ids(tokenizer, token)) == 1:
        raise ValueError(f"placeholder token {token!r} (from train.identifiers) is already in the tokenizer's "
                         "vocabulary; choose another identifier")
    expected = ids(tokenizer, CONTEXT)
    tokenizer.add_tokens(token)
    token_id = tokenizer.convert_tokens_to_ids(token)
    if ids(tokenizer, f"{CONTEXT} {token}") != [*expected, token_id]:
        raise ValueError(f"placeholder token {token!r} (from train.identifiers) does not stay one token "
                         "when added to the tokenizer; choose another identifier")
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


def embeds_files(count: int) -> list[str]:
    """The file names of `count` saved tokens: textual_inversion.py's for one, numbered for several."""
    return [EMBEDS] if count == 1 else [f"learned_embeds_{i}.safetensors" for i in range(count)]


@dataclass
class LearnedTokens:
    """The placeholders' rows of the text encoder's input embeddings, and a copy of the matrix to restore."""

    tokens: list[str]
    ids: list[int]
    original: torch.Tensor

    @classmethod
    def add(cls, parts, tokens: Sequence[str], class_names: Sequence[str]) -> "LearnedTokens":
        """Add `tokens` to parts.tokenizer and parts.text_encoder, each one's row set to its class noun's
        embedding."""
        token_ids = [add_token(parts.tokenizer, token) for token in tokens]
        # mean_resizing would fit a Gaussian to the whole matrix for rows that are overwritten next.
        parts.text_encoder.resize_token_embeddings(len(parts.tokenizer), mean_resizing=False)
        weight = parts.text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            for token_id, class_name in zip(token_ids, class_names, strict=True):
                weight[token_id] = class_embedding(parts.tokenizer, weight, class_name)
        return cls.track(parts, tokens, token_ids)

    @classmethod
    def track(cls, parts, tokens: Sequence[str], token_ids: Sequence[int]) -> "LearnedTokens":
        """Train the rows `token_ids` of `tokens`, already in parts.tokenizer and parts.text_encoder."""
        weight = parts.text_encoder.get_input_embeddings().weight
        weight.requires_grad_(True)
        learned = cls(list(tokens), list(token_ids), weight.detach().clone())
        weight.register_hook(learned.mask_gradient)
        return learned

    def mask_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradient of the placeholders' rows only, so that clipping sees nothing else."""
        mask = torch.zeros(len(grad), 1, device=grad.device, dtype=grad.dtype)
        mask[self.ids] = 1
        return grad * mask

    @staticmethod
    def weight(parts) -> torch.nn.Parameter:
        return parts.text_encoder.get_input_embeddings().weight

    def restore(self, parts) -> None:
        """Every row but the placeholders' back to its value before training."""
        weight = self.weight(parts)
        self.original = self.original.to(weight.device)  # once: the trainer moves the model after `add`
        with torch.no_grad():
            rows = weight[self.ids].clone()
            weight.copy_(self.original)
            weight[self.ids] = rows

    def save(self, parts, folder: Path) -> None:
        weight = self.weight(parts)
        for name, token, token_id in zip(embeds_files(len(self.ids)), self.tokens, self.ids, strict=True):
            row = weight[token_id : token_id + 1].detach().cpu().contiguous()
            save_file({token: row}, Path(folder) / name, metadata={"format": "pt"})


def load_token(pipe, folder: Path) -> None:
    """Add the saved placeholders (each file's one key) to a stock pipeline."""
    if (Path(folder) / EMBEDS).is_file():
        pipe.load_textual_inversion(str(folder), weight_name=EMBEDS)
    else:  # concepts trained jointly
        pipe.load_textual_inversion(sorted(str(path) for path in Path(folder).glob("learned_embeds_*.safetensors")))


class NewToken(PlainText):
    """A method whose trainable part includes the placeholders' embedding rows, one per concept (Textual
    Inversion, and Custom Diffusion beside its K/V weights)."""

    # The embedding rows train, so captions go through the text encoder every step.
    trains_text_encoder = True

    def __init__(self) -> None:
        self.learned: LearnedTokens | None = None  # set by prepare

    def token(self, identifier: str) -> str:
        return placeholder(identifier)

    def check(self, tokenizer, token: str) -> None:
        check_token(tokenizer, token)

    def prepare(self, parts, tokens: Sequence[str], class_names: Sequence[str]) -> list[torch.nn.Parameter]:
        self.learned = LearnedTokens.add(parts, tokens, class_names)
        return [LearnedTokens.weight(parts)]

    def after_step(self, parts) -> None:
        self.learned.restore(parts)

    def save(self, parts, folder: Path) -> None:
        self.learned.save(parts, folder)

    def load_into(self, pipe, folder: Path) -> None:
        load_token(pipe, folder)
