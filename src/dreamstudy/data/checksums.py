"""sha256 lists in `sha256sum` format (`<hex>  <relative/path>`), as pinned for DreamBench's files."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from dreamstudy.data.dreambench import DataError
from dreamstudy.io import atomic_file

_LINE = re.compile(r"^(?P<digest>[0-9a-f]{64}) [ *](?P<path>\S.*)$")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_sha256_list(path: Path) -> dict[str, str]:
    """relative path -> sha256 hex digest; any malformed line is an error naming path:line."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: checksum list not found") from None
    digests = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        match = _LINE.match(line)
        if not match:
            raise DataError(f"{path}:{number}: not a '<sha256>  <path>' line: {line!r}")
        digests[match["path"]] = match["digest"]
    return digests


def write_sha256_list(root: Path, dest: Path) -> None:
    """List every file under `root` (except `dest` itself), sorted, paths relative to `root`."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.resolve() != dest.resolve())
    with atomic_file(dest) as handle:
        for file in files:
            handle.write(f"{sha256_bytes(file.read_bytes())}  {file.relative_to(root).as_posix()}\n")
