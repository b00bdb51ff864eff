"""The identifier as a whole word in captions and prompts, the one rule both training and CLIP-T use."""

from __future__ import annotations

import re


def replace_identifier(text: str, identifier: str, replacement: str) -> str:
    """Replace `identifier` where it stands as a whole word ('sks' leaves 'asks' alone); lookarounds rather
    than \\b so that identifiers like '<sks>' match too."""
    return re.sub(rf"(?<!\w){re.escape(identifier)}(?!\w)", replacement, text)
