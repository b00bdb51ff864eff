"""Outputs appear whole or not at all: written under a temporary, renamed into place when complete.

Where the temporaries live: in `.tmp/` at the root of the DVC project that holds the output (the folder with
`.dvc/`, which is a stage's working directory). Not next to the output: a stage killed mid-write would leave
its temporary inside a DVC output's parent, which is often another stage's dependency folder, so that stage
would rerun and dvc.lock record the junk. `.tmp/` is no output or dependency of any stage, Git and DVC
ignore it (.gitignore, .dvcignore), and it is on the project's filesystem, so the final rename stays atomic.
Two cases keep the old place, a hidden sibling of the output: an output outside any DVC project (no stage
depends on its folder), and an output on another filesystem than `.tmp/` (a rename cannot cross it).

A temporary's name holds its writer's pid. One whose writer is gone (a stage killed mid-write: SIGKILL, or a
SIGTERM, which Python does not unwind) is removed by the next process that writes there; a writer that
fails or is interrupted (KeyboardInterrupt) removes its own on the way out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

SCRATCH = ".tmp"  # at a DVC project's root
# ".{output name}.{pid}.{mkdtemp's 8 random characters}.tmp"
_TEMPORARY = re.compile(r"\..+\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp")
_live: set[Path] = set()     # this process's temporaries, while it writes them
_swept: set[Path] = set()    # the folders this process has cleared of dead writers' temporaries
_sweeping = threading.Lock()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces `path` only if the block completes."""
    path = Path(path)
    folder = scratch_folder(path)
    tmp = _make(tempfile.mkdtemp, path, folder)
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the output should not be
        yield tmp
        _put(tmp, path, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _live.discard(tmp)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator:
    """Yield an open temporary file that replaces `path` only if the block completes."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=scratch_folder(path))
    tmp = Path(tmp)
    _live.add(tmp)
    try:
        with os.fdopen(fd, mode) as handle:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it private; the output should not be
            yield handle
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _live.discard(tmp)


def _put(tmp: Path, path: Path, folder: Path) -> None:
    """Rename folder `tmp` to `path`. A folder already there is first moved aside into `folder` and removed
    after: a stage killed meanwhile leaves the new output or the old one, not a half-deleted one."""
    if not path.exists():
        os.replace(tmp, path)
        return
    old = _make(tempfile.mkdtemp, path, folder)
    try:
        os.replace(path, old)  # onto the empty folder that mkdtemp made
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
        _live.discard(old)


def scratch_folder(path: str | Path) -> Path:
    """The folder where output `path`'s temporary is written (see the module's docstring), after removing
    from it the temporaries of writers that are gone (the first time this process writes there)."""
    parent = Path(os.path.abspath(path)).parent  # not resolved: a symlinked folder may be another filesystem
    parent.mkdir(parents=True, exist_ok=True)
    folder = parent
    root = next((f for f in (parent, *parent.parents) if (f / ".dvc").is_dir()), None)
    if root is not None:
        (root / SCRATCH).mkdir(exist_ok=True)
        if os.stat(root / SCRATCH).st_dev == os.stat(parent).st_dev:
            folder = root / SCRATCH
    with _sweeping:  # another thread's writer waits: the sweep must not meet its temporary half-made
        if folder not in _swept:
            sweep(folder)
            _swept.add(folder)
    return folder


def sweep(folder: str | Path) -> list[Path]:
    """Remove the temporaries in `folder` whose writer is gone; return them."""
    stale = [entry for entry in Path(folder).iterdir()
             if (match := _TEMPORARY.fullmatch(entry.name)) and not _writing(int(match["pid"]), entry)]
    for entry in stale:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)  # another process may have swept it first
    return stale


def _writing(pid: int, temporary: Path) -> bool:
    """Whether process `pid` may still be writing `temporary`."""
    if pid == os.getpid():
        return temporary in _live  # a killed writer's pid, reused by this process (containers reuse pids)
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _make(mkdtemp, path: Path, folder: Path) -> Path:
    tmp = Path(mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=folder))
    _live.add(tmp)
    return tmp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj) -> None:
    with atomic_file(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")


def write_jsonl(path: str | Path, rows) -> None:
    with atomic_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]
