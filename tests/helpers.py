"""What several test modules build: the smoke params, noise images, a small training set."""

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from dreamstudy.data import fetch
from dreamstudy.data.github import ARCHIVE_ROOT
from dreamstudy.methods.trainer import Examples
from dreamstudy.params import load_params

ROOT = Path(__file__).resolve().parents[1]


def smoke_train_params(**sections):
    """params.smoke.yaml's `train` section, with some method sections' keys changed."""
    train = load_params(ROOT / "params.smoke.yaml").train
    return train.model_copy(update={name: getattr(train, name).model_copy(update=change)
                                    for name, change in sections.items()})


def noise_image(seed: int, size: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def noise_examples(folder: Path, count: int, seed: int, size: int = 40,
                   caption: str = "a photo of sks dog") -> Examples:
    """`count` noise images written into `folder`, each with `caption`."""
    paths = [folder / f"{i:02d}.png" for i in range(count)]
    for i, path in enumerate(paths):
        noise_image(seed * 1000 + i, size).save(path)
    return Examples([(path, caption) for path in paths])


def github_zip(extra: dict[str, bytes] | None = None, symlink: str | None = None) -> bytes:
    """A stand-in for GitHub's archive of the commit: dataset/ from the embedded copy, LICENSE.md at the root."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{ARCHIVE_ROOT}/README.md", "not part of the dataset")
        for file in sorted(fetch.EMBEDDED_DIR.rglob("*")):
            relative = file.relative_to(fetch.EMBEDDED_DIR).as_posix()
            if file.is_file() and relative != "SHA256SUMS":
                folder = "" if relative == "LICENSE.md" else "dataset/"
                archive.writestr(f"{ARCHIVE_ROOT}/{folder}{relative}", file.read_bytes())
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
        if symlink:
            link = zipfile.ZipInfo(symlink)
            link.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(link, "/etc/passwd")
    return buffer.getvalue()


class FakeGitHub:
    """Serves `archive` for any URL and records the URLs asked for."""

    def __init__(self, archive: bytes):
        self.archive = archive
        self.urls: list[str] = []

    def urlopen(self, url, timeout):
        self.urls.append(url)
        return io.BytesIO(self.archive)
