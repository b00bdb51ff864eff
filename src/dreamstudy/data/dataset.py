"""The normalised DreamBench that the fetch_data stage writes, as every later stage reads it.

Apart from data.fetch, so that reading the data set does not import the code that downloads and verifies it
(a stage's code dependencies are the modules it imports)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dreamstudy.data.dreambench import DataError, Prompt


@dataclass(frozen=True)
class Subject:
    name: str
    class_name: str
    live: bool
    images: list[Path]  # normalised PNGs, sorted
    prompts: list[Prompt]  # the live or the object list: 25 prompts


@dataclass(frozen=True)
class DreamBench:
    root: Path
    source: str
    image_size: int
    subjects: dict[str, Subject]


def load_dataset(out_dir: str | Path) -> DreamBench:
    """Read the normalised DreamBench that `fetch_dreambench` wrote to `out_dir`."""
    root = Path(out_dir)
    manifest = _read_json(root / "manifest.json")
    prompts = {kind: [Prompt(**row) for row in rows] for kind, rows in _read_json(root / "prompts.json").items()}
    subjects = {}
    for entry in manifest["subjects"]:
        images = [root / file["file"] for file in entry["files"]]
        for image in images:
            if not image.is_file():
                raise DataError(f"{image}: listed in {root / 'manifest.json'} but missing; run fetch_data again")
        subjects[entry["name"]] = Subject(entry["name"], entry["class"], entry["kind"] == "live", images,
                                          prompts[entry["kind"]])
    return DreamBench(root, manifest["source"], manifest["image_size"], subjects)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; run the fetch_data stage first (dvc repro fetch_data)") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON: {err}") from None
