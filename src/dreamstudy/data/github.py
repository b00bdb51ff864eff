"""DreamBench from GitHub: the archive of the pinned commit, downloaded once into a cache outside the repo."""

from __future__ import annotations

import contextlib
import shutil
import stat
import sys
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
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
    """The dataset folder extracted from the GitHub archive of DREAMBENCH_COMMIT (not yet verified).

    An extraction made earlier is first checked against the cached archive, and its damaged files extracted again.
    """
    folder = cache_root(cache_dir) / "dreambench"
    dataset_dir = folder / ARCHIVE_ROOT
    archive = folder / f"{ARCHIVE_ROOT}.zip"
    if dataset_dir.is_dir() and not archive.is_file():
        return dataset_dir  # nothing to check it against here; fetch_data still checks every file's pinned sha256
    if not archive.is_file():
        _download(ARCHIVE_URL, archive)
    try:
        if dataset_dir.is_dir():
            _repair_extraction(archive, dataset_dir)
        else:
            with atomic_dir(dataset_dir) as staging:
                _extract_dataset(archive, staging)
    except DataError:
        archive.unlink()  # a bad archive must not stick in the cache: the next run downloads it again
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
    with _open_archive(archive) as zipped:
        for member, relative in _dataset_members(zipped, archive):
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            with zipped.open(member) as source, open(dest / relative, "wb") as out:
                shutil.copyfileobj(source, out)


def _repair_extraction(archive: Path, dataset_dir: Path) -> None:
    """Extract again, each in one piece, the files of `dataset_dir` whose size or CRC-32 differs from the archive's
    directory (or that are missing), saying so in one line. Cheap: CRC-32 runs at GB/s, DreamBench is 107 MB."""
    with _open_archive(archive) as zipped:
        damaged = [(member, relative) for member, relative in _dataset_members(zipped, archive)
                   if not _extracted_intact(dataset_dir / relative, member)]
        if damaged:
            names = ", ".join(relative for _, relative in damaged[:5]) + (", ..." if len(damaged) > 5 else "")
            print(f"dreamstudy: {dataset_dir}: {len(damaged)} file(s) missing or not as in {archive} (size or "
                  f"CRC-32): {names}; extracting them again", file=sys.stderr)
        for member, relative in damaged:
            (dataset_dir / relative).parent.mkdir(parents=True, exist_ok=True)
            with zipped.open(member) as source, atomic_file(dataset_dir / relative, "wb") as out:
                shutil.copyfileobj(source, out)


def _extracted_intact(path: Path, member: zipfile.ZipInfo) -> bool:
    """Whether `path` has `member`'s size and CRC-32, as the archive's directory records them."""
    try:
        if path.stat().st_size != member.file_size:
            return False
        crc = 0
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                crc = zlib.crc32(chunk, crc)
    except FileNotFoundError:
        return False
    return crc == member.CRC


@contextlib.contextmanager
def _open_archive(archive: Path) -> Iterator[zipfile.ZipFile]:
    try:
        with zipfile.ZipFile(archive) as zipped:
            yield zipped
    except zipfile.BadZipFile as err:
        raise DataError(f"{archive}: not a valid zip archive ({err})") from None


def _dataset_members(zipped: zipfile.ZipFile, archive: Path) -> list[tuple[zipfile.ZipInfo, str]]:
    """The archive's members that belong in the dataset folder, with their paths there; refuses the archive
    if any member would escape the folder or none belongs in it."""
    members = zipped.infolist()
    for member in members:
        _refuse_escape(member, archive)
    wanted = [(member, relative) for member in members if (relative := _dataset_path(member))]
    if not wanted:
        raise DataError(f"{archive}: no {ARCHIVE_ROOT}/dataset/ folder in the archive")
    return wanted


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
