"""Embeddings of reference images (real DreamBench photos, class images), computed once.

Every method and strategy of a study compares its samples with the same real images, and every run's
evaluate stage (and every DVC experiment) shares them. So an embedding is kept by (encoder, image sha256):
in memory for the run, and as one safetensors file per image under `layout.cache_dir()/embeddings`,
outside the repository like the other model caches.

Each image is encoded alone: a batched forward pass rounds differently in the last bit depending on the
batch, so only then is a cached embedding a function of the image, whatever eval.batch_size and whichever
run filled the cache (a run's scores do not depend on the other runs).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from dreamstudy.io import atomic_file, file_sha256
from dreamstudy.layout import cache_dir
from dreamstudy.metrics.encoders import Encoders
from dreamstudy.metrics.images import open_images

CACHE_VERSION = 1  # bump when preprocessing changes, so older files are not read
TENSOR = "embedding"


def default_cache_root() -> Path:
    return cache_dir() / "embeddings"


class EmbeddingCache:
    """Image embeddings by encoder and image content; `root=None` keeps them in memory only."""

    def __init__(self, encoders: Encoders, root: str | Path | None = None):
        self.encoders = encoders
        self.root = None if root is None else Path(root)
        self._memory: dict[tuple[str, str], torch.Tensor] = {}
        self._writable = self.root is not None  # until a write fails

    def images(self, which: str, paths: Sequence[str | Path]) -> torch.Tensor:
        """[N, D] L2-normalised embeddings of the image files, by encoder `which` ("clip" or "dino")."""
        if not paths:
            raise ValueError(f"no images to embed with {which!r}")
        key = self.encoders.cache_key(which)
        digests = [file_sha256(path) for path in paths]
        # dict keeps one path per new digest: duplicate files are encoded once
        todo = {digest: path for digest, path in zip(digests, paths) if not self._recall(key, digest)}
        for digest, path in todo.items():
            self._store(key, digest, self.encoders.embed_images(which, open_images([path]), batch_size=1)[0])
        return torch.stack([self._memory[key, digest] for digest in digests])

    def _file(self, key: str, digest: str) -> Path:
        return self.root / f"v{CACHE_VERSION}" / key / f"{digest}.safetensors"

    def _recall(self, key: str, digest: str) -> bool:
        if (key, digest) in self._memory:
            return True
        if self.root is None or not self._file(key, digest).is_file():
            return False
        file = self._file(key, digest)
        try:
            self._memory[key, digest] = load(file.read_bytes())[TENSOR]
        except (SafetensorError, KeyError, OSError) as err:  # a torn or foreign file: encode again
            warnings.warn(f"{file}: unreadable cached embedding ({err!r}); encoding the image again")
            return False
        return True

    def _store(self, key: str, digest: str, embedding: torch.Tensor) -> None:
        self._memory[key, digest] = embedding = embedding.detach().cpu().contiguous()
        if not self._writable:
            return
        try:
            # atomic: another stage reading the cache never sees half a file
            with atomic_file(self._file(key, digest), "wb") as handle:
                handle.write(save({TENSOR: embedding}))
        except OSError as err:
            # The cache only saves time: a folder that cannot be written (read-only, full, not a folder) must not
            # stop an evaluation. What it already holds is still read.
            self._writable = False
            warnings.warn(f"{self.root}: embedding cache not writable ({type(err).__name__}: {err}); new "
                          "embeddings are kept in memory only, for this run")
