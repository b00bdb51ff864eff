"""DreamBench from GitHub: the archive of the pinned commit, downloaded once into a cache outside the repo."""

from __future__ import annotations

import shutil
import stat
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from dreamstudy import layout
from dreamstudy.data.dreambench import DataError
from dreamstudy.io import atomic_dir, atomic_file
from dreamstudy.params import DREAMBENCH_COMMIT

ARCHIVE_URL = f"https://github.com/google/dreambooth/archive/{DREAMBENCH_COMMIT}.zip"
ARCHIVE_ROOT = f"dreambooth-{DREAMBENCH_COMMIT}"  # GitHub's top folder in the archive
DOWNLOAD_TIMEOUT_S = 60


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else the machine's cache (layout.cache_dir)."""
    return Path(cache_dir) if cache_dir else layout.cache_dir()


def github_dataset(cache_dir: str | Path | None = None) -> Path:
    """The dataset folder extracted from the GitHub archive of DREAMBENCH_COMMIT (not yet verified)."""
    folder = cache_root(cache_dir) / "dreambench"
    dataset_dir = folder / ARCHIVE_ROOT
    if dataset_dir.is_dir():
        return dataset_dir
    archive = folder / f"{ARCHIVE_ROOT}.zip"
    if not archive.is_file():
        _download(ARCHIVE_URL, archive)
    try:
        with atomic_dir(dataset_dir) as staging:
            _extract_dataset(archive, staging)
    except DataError:
        archive.unlink()  # a bad download must not stick in the cache: the next run downloads again
        raise
    return dataset_dir


def _download(url: str, dest: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, atomic_file(dest, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as err:  # URLError, HTTPError and timeouts are all OSErrors
        raise DataError(f"could not download DreamBench from {url} ({err}). Without internet, set data.source "
                        "to 'local' (data.local_path: a copy of DreamBench's dataset/ folder) or to 'embedded' "
                        "(the downscaled copy in data/embedded/dreambench)") from None


def _extract_dataset(archive: Path, dest: Path) -> None:
    """Extract `{ARCHIVE_ROOT}/dataset/**` into `dest`, with the repository's LICENSE.md beside it.

    The dataset's CC-BY licence sits at the repository root, not in dataset/; the pinned checksum
    list includes it so that every source carries it.
    """
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            for member in members:
                _refuse_escape(member, archive)
            wanted = [(member, _dataset_path(member)) for member in members if _dataset_path(member)]
            if not wanted:
                raise DataError(f"{archive}: no {ARCHIVE_ROOT}/dataset/ folder in the archive")
            for member, relative in wanted:
                (dest / relative).parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(member) as source, open(dest / relative, "wb") as out:
                    shutil.copyfileobj(source, out)
    except zipfile.BadZipFile as err:
        raise DataError(f"{archive}: not a valid zip archive ({err})") from None


def _dataset_path(member: zipfile.ZipInfo) -> str | None:
    """Where `member` goes in the dataset folder; None for folders and files outside the dataset."""
    if member.is_dir():
        return None
    if member.filename == f"{ARCHIVE_ROOT}/LICENSE.md":
        return "LICENSE.md"
    prefix = f"{ARCHIVE_ROOT}/dataset/"
    return member.filename.removeprefix(prefix) if member.filename.startswith(prefix) else None


def _refuse_escape(member: zipfile.ZipInfo, archive: Path) -> None:
    """Zip-slip guard: no member may be absolute, climb with '..', or be a symbolic link."""
    name = member.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive or ".." in parts:
        raise DataError(f"{archive}: member {name!r} would extract outside the target folder")
    if stat.S_ISLNK(member.external_attr >> 16):
        raise DataError(f"{archive}: member {name!r} is a symbolic link")
