"""DreamBench from GitHub, a local copy or the embedded copy: verified and normalised (data.dataset reads it back).

Every source goes through the same checks (layout, sha256 of every file, full decode of every image)
and yields the same output: images/{subject}/{NN}.png, manifest.json, prompts.json and the licence
files. The output folder appears only when all of it is written (atomic_dir).
"""

from __future__ import annotations

import io
import sys
from dataclasses import asdict
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps

from dreamstudy.data.checksums import read_sha256_list, sha256_bytes
from dreamstudy.data.dreambench import SUBJECTS, DataError, is_live, parse_prompts_and_classes
from dreamstudy.data.github import github_dataset
from dreamstudy.io import atomic_dir, write_json
from dreamstudy.params import DREAMBENCH_COMMIT, SOURCES

# sha256 of every file of google/dreambooth's dataset/ at DREAMBENCH_COMMIT, plus its LICENSE.md.
DREAMBENCH_SHA256 = Path(__file__).with_name("dreambench_sha256.txt")
# The embedded copy ships with the git checkout (repo root = parent of src/), not with the package.
EMBEDDED_DIR = Path(__file__).resolve().parents[3] / "data" / "embedded" / "dreambench"
EMBEDDED_SHA256 = EMBEDDED_DIR / "SHA256SUMS"

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
PROMPTS_FILE = "prompts_and_classes.txt"
LICENCE_FILES = ("LICENSE.md", "references_and_licenses.txt")  # CC-BY 4.0: keep them with any copy
# What operating systems leave in a folder copied or unzipped there: skipped wherever it is, with a note.
OS_LEFTOVER_FILES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})  # compared lower-case, as Windows does
OS_LEFTOVER_FOLDERS = frozenset({"__MACOSX"})  # macOS's zip: resource forks of the other files
APPLEDOUBLE_PREFIX = "._"  # macOS's resource fork of a file, on a filesystem without them


def fetch_dreambench(source: str, out_dir: str | Path, *, image_size: int,
                     local_path: str | Path | None = None, cache_dir: str | Path | None = None) -> None:
    """Write all 30 DreamBench subjects, verified and normalised to `image_size` px squares, to `out_dir`.

    source: "github" (download into `cache_dir`, default $DREAMSTUDY_CACHE or ~/.cache/dreamstudy),
    "local" (`local_path`: a folder with the dataset/ layout) or "embedded" (the repository's 128 px copy).
    Raises DataError naming the file or subject at fault; `out_dir` is then left untouched.
    """
    dataset_dir, checksum_file = _locate(source, local_path, cache_dir)
    expected = read_sha256_list(checksum_file)
    _check_layout(dataset_dir, expected, checksum_file)
    with atomic_dir(out_dir) as staging:
        prompts_text = _verified(dataset_dir, PROMPTS_FILE, expected).decode()
        prompts = parse_prompts_and_classes(prompts_text, str(dataset_dir / PROMPTS_FILE)).prompts
        for name in LICENCE_FILES:
            (staging / name).write_bytes(_verified(dataset_dir, name, expected))
        subjects = [_normalise_subject(dataset_dir, name, expected, staging, image_size) for name in SUBJECTS]
        write_json(staging / "manifest.json", {"source": source, "commit": DREAMBENCH_COMMIT,
                                               "image_size": image_size, "subjects": subjects})
        write_json(staging / "prompts.json", {kind: [asdict(prompt) for prompt in prompt_list]
                                              for kind, prompt_list in prompts.items()})


def _locate(source: str, local_path, cache_dir) -> tuple[Path, Path]:
    """The dataset folder of `source` and the checksum list its files must match."""
    if source == "github":
        return github_dataset(cache_dir), DREAMBENCH_SHA256
    if source == "local":
        # `~` expanded here, where the path is used: params and the DAG keep it as written, the same on
        # every machine (an expanded home folder would rerun the study on another one)
        if not local_path or not Path(local_path).expanduser().is_dir():
            raise DataError(f"data.local_path {local_path!r}: not a folder (source 'local' needs a copy of "
                            "DreamBench's dataset/ folder there)")
        return Path(local_path).expanduser(), DREAMBENCH_SHA256
    if source == "embedded":
        if not EMBEDDED_SHA256.is_file():
            raise DataError(f"{EMBEDDED_DIR}: embedded DreamBench not found; it ships with the git checkout, "
                            "not the installed package; use data.source 'github' or 'local'")
        return EMBEDDED_DIR, EMBEDDED_SHA256
    raise DataError(f"data.source {source!r}: expected one of {list(SOURCES)}")


def _check_layout(dataset_dir: Path, expected: dict[str, str], checksum_file: Path) -> None:
    """Fail on unknown folders, non-image files, and files missing from or absent in the checksum list.

    What operating systems leave in a copied folder is skipped, and named in one line on stderr."""
    present, leftovers = set(), []
    for entry in sorted(dataset_dir.iterdir()):
        if _is_os_leftover(entry):
            leftovers.append(entry)
        elif not entry.is_dir():
            present.add(entry.name)
        elif entry.name not in SUBJECTS:
            raise DataError(f"{entry}: unknown subject folder (DreamBench has {sorted(SUBJECTS)})")
        else:
            for file in sorted(entry.iterdir()):
                if _is_os_leftover(file):
                    leftovers.append(file)
                elif not file.is_file() or file.suffix.lower() not in IMAGE_SUFFIXES:
                    raise DataError(f"{file}: not an image file, in the folder of subject {entry.name!r}")
                else:
                    present.add(f"{entry.name}/{file.name}")
    if leftovers:
        names = ", ".join(entry.relative_to(dataset_dir).as_posix() + "/" * entry.is_dir() for entry in leftovers[:5])
        names += ", ..." if len(leftovers) > 5 else ""  # a copy onto a FAT drive has a ._ file per image
        print(f"dreamstudy: {dataset_dir}: ignored {len(leftovers)} leftover(s) of an operating system: {names}",
              file=sys.stderr)
    if checksum_file.parent == dataset_dir:  # the embedded copy lists its files beside them
        present.discard(checksum_file.name)

    missing = sorted(expected.keys() - present)
    if missing:
        raise DataError(f"{dataset_dir / missing[0]}: missing; {len(missing)} file(s) of {checksum_file} "
                        f"are absent: {missing[:5]}")
    unlisted = sorted(present - expected.keys())
    if unlisted:
        raise DataError(f"{dataset_dir / unlisted[0]}: not in the checksum list {checksum_file}")


def _is_os_leftover(entry: Path) -> bool:
    """Finder's, Explorer's and macOS zip's own files (never DreamBench's), wherever they are in a copy."""
    if entry.is_dir():
        return entry.name in OS_LEFTOVER_FOLDERS
    return entry.name.lower() in OS_LEFTOVER_FILES or entry.name.startswith(APPLEDOUBLE_PREFIX)


def _verified(dataset_dir: Path, relative: str, expected: dict[str, str]) -> bytes:
    data = (dataset_dir / relative).read_bytes()
    if (digest := sha256_bytes(data)) != expected[relative]:
        raise DataError(f"{dataset_dir / relative}: checksum mismatch (sha256 {digest}, expected "
                        f"{expected[relative]}): not DreamBench's file at {DREAMBENCH_COMMIT[:7]}")
    return data


def _normalise_subject(dataset_dir: Path, subject: str, expected: dict[str, str], out: Path,
                       image_size: int) -> dict:
    """Write the subject's images as centre-cropped RGB PNG squares; return its manifest entry."""
    sources = sorted(relative for relative in expected if relative.startswith(f"{subject}/"))
    if not sources:
        raise DataError(f"subject {subject!r}: no images in the checksum list")
    files = []
    for relative in sources:
        data = _verified(dataset_dir, relative, expected)
        image = _decode(data, dataset_dir / relative)
        target = PurePosixPath("images", subject, f"{PurePosixPath(relative).stem}.png")
        (out / target).parent.mkdir(parents=True, exist_ok=True)
        ImageOps.fit(image, (image_size, image_size), Image.Resampling.LANCZOS).save(out / target)
        files.append({"file": str(target), "source_file": relative, "sha256": expected[relative],
                      "bytes": len(data), "width": image.width, "height": image.height})
    return {"name": subject, "class": SUBJECTS[subject], "kind": "live" if is_live(subject) else "object",
            "files": files}


def _decode(data: bytes, path: Path) -> Image.Image:
    """The upright RGB image in `data`; load() decodes every byte, so truncation shows here."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: corrupt or truncated image ({err})") from None
