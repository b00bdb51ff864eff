"""SD 1.x's CLIP BPE tokenizer, rebuilt offline from the vocabulary that open_clip_torch ships.

Stable Diffusion 1.x uses OpenAI CLIP's tokenizer (openai/clip-vit-large-patch14). open_clip carries the
same BPE merges as a gzipped text file; deriving vocab.json and merges.txt from it the way OpenAI's
`SimpleTokenizer` does gives a tokenizer folder that `transformers.CLIPTokenizer` reads, without any
download, and whose ids match the real one (so the tiny model's prompts tokenize as SD's would).
"""

from __future__ import annotations

import gzip
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


def clip_merges() -> list[str]:
    """The BPE merges ("a b" per line) in rank order, as OpenAI's SimpleTokenizer reads them."""
    import open_clip.tokenizer as openclip_tokenizer  # with timm ~0.5 s: only building the tiny model needs it

    lines = gzip.open(openclip_tokenizer.default_bpe()).read().decode("utf-8").split("\n")
    # Line 0 is the file's header; the first NUM_MERGES lines after it are the merges CLIP uses.
    return lines[1 : NUM_MERGES + 1]


def clip_vocab(merges: list[str]) -> dict[str, int]:
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
