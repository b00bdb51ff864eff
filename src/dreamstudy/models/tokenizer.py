"""SD 1.x's CLIP BPE tokenizer, rebuilt offline from the vocabulary that open_clip_torch ships.

Stable Diffusion 1.x uses OpenAI CLIP's tokenizer (openai/clip-vit-large-patch14). open_clip carries the
same BPE merges as a gzipped text file; deriving vocab.json and merges.txt from it the way OpenAI's
`SimpleTokenizer` does gives a tokenizer folder that `transformers.CLIPTokenizer` reads, without any
download, and whose ids match the real one (so the tiny model's prompts tokenize as SD's would).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
from pathlib import Path

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
# CLIP's vocabulary: 256 byte symbols, the same with an end-of-word mark, the merges, and BOS/EOS.
NUM_MERGES = 49152 - 256 - 2
MERGES_HEADER = "#version: 0.2"

# SD 1.5's tokenizer/tokenizer_config.json, less the fields that only name where it came from.
TOKENIZER_CONFIG = {
    "tokenizer_class": "CLIPTokenizer",
    "model_max_length": MODEL_MAX_LENGTH,
    "bos_token": BOS_TOKEN,
    "eos_token": EOS_TOKEN,
    "unk_token": EOS_TOKEN,
    "pad_token": EOS_TOKEN,
    "do_lower_case": True,
    "add_prefix_space": False,
    "errors": "replace",
}
SPECIAL_TOKENS_MAP = {key: TOKENIZER_CONFIG[key] for key in ("bos_token", "eos_token", "unk_token",
                                                             "pad_token")}


@functools.cache
def clip_merges() -> tuple[str, ...]:
    """The BPE merges ("a b" per line) in rank order, as OpenAI's SimpleTokenizer reads them."""
    # found, not imported: importing open_clip imports torch and timm (seconds); params validation reads this
    package = Path(importlib.util.find_spec("open_clip").submodule_search_locations[0])
    lines = gzip.open(package / "bpe_simple_vocab_16e6.txt.gz").read().decode("utf-8").split("\n")
    # Line 0 is the file's header; the first NUM_MERGES lines after it are the merges CLIP uses.
    return tuple(lines[1 : NUM_MERGES + 1])


def clip_vocab(merges: tuple[str, ...]) -> dict[str, int]:
    """Token -> id in CLIP's order: byte symbols, byte symbols + '</w>', merged pairs, BOS, EOS."""
    import open_clip.tokenizer as openclip_tokenizer

    byte_symbols = list(openclip_tokenizer.bytes_to_unicode().values())
    tokens = byte_symbols + [symbol + "</w>" for symbol in byte_symbols]
    tokens += [merge.replace(" ", "") for merge in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def write_clip_tokenizer(folder: str | Path) -> None:
    """Write vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = clip_merges()
    vocab = clip_vocab(merges)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("\n".join([MERGES_HEADER, *merges]) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS_MAP, indent=2) + "\n")


# Identifiers. CLIP learned its merges in order of frequency in its training text, so a whole word that is one
# token of the last fifth of the merges is rare there: it names a subject without bringing a meaning of its
# own (DreamBooth's "rare-token identifiers"; "sks" is merge 47,624).
RARE_MERGE_FROM = 39_488  # token id 40,000


def check_identifier(word: str) -> None:
    """ValueError unless `word` is lower-case ASCII letters that SD's tokenizer reads as one rare token."""
    if not (word.isascii() and word.isalpha() and word.islower()):
        raise ValueError(f"{word!r} is not a word of lower-case ASCII letters")
    whole = f"{word}</w>"
    rank = next((i for i, merge in enumerate(clip_merges()) if merge.replace(" ", "") == whole), None)
    if rank is None:
        raise ValueError(f"{word!r} is not one token of SD's (CLIP's) tokenizer: it would be split in several")
    if rank < RARE_MERGE_FROM:
        raise ValueError(f"{word!r} is a common token of SD's tokenizer (id {rank + 512}): an ordinary word or "
                         f"name whose meaning the model already knows; take one with an id from "
                         f"{RARE_MERGE_FROM + 512} on, like 'sks'")
