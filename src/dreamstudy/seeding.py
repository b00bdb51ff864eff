"""Every random choice flows from params.yaml's `seed`: sub-seeds are derived from it by name."""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *parts: object) -> int:
    """A stable 31-bit seed for one named use of the root seed (same on every machine and run)."""
    key = "/".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") & 0x7FFFFFFF
