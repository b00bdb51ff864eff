"""The evaluate stage: one run's inputs (its samples and PRES images, its subject's real photos from the
DreamBench manifest and class images from data/class_priors), checked before any encoder loads, and its
scores (metrics.scores). Nothing in them depends on the other runs of the study."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from dreamstudy.data.dreambench import SUBJECTS
from dreamstudy.io import read_jsonl
from dreamstudy.metrics.cache import EmbeddingCache, default_cache_root
from dreamstudy.metrics.encoders import Encoders, load_encoders
from dreamstudy.metrics.evaluate import SAMPLE_KEYS, evaluate_samples, prompt_diversity, real_images
from dreamstudy.metrics.preservation import base_class_images, preservation
from dreamstudy.metrics.scores import Run, RunScores
from dreamstudy.metrics.tables import PRES_COLUMNS, SUBJECT_KEYS, require_keys
from dreamstudy.sampling.protocol import PRES, SAMPLES

PRES_KEYS = ("prompt", "seed", "file")


@dataclass
class RunInputs:
    samples: list[dict]  # samples.jsonl's rows, each with its image's absolute "path"
    pres_images: list[Path]  # from pres.jsonl; none without that file (then pres is NaN)
    base_images: list[Path]  # the base model's class images of the PRES images' seeds, those that exist
    references: list[Path]  # the subject's real photos


def read_references(dataset_dir: str | Path, subject: str) -> list[Path]:
    """`subject`'s real images, from data/dreambench/manifest.json (written by fetch_data)."""
    dataset_dir = Path(dataset_dir)
    manifest_path = dataset_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        references = {entry["name"]: [dataset_dir / image["file"] for image in entry["files"]]
                      for entry in manifest["subjects"]}
    except FileNotFoundError:
        raise FileNotFoundError(f"{manifest_path}: no such file (run the fetch_data stage first)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{manifest_path}: not a DreamBench manifest "
                         f"({{'subjects': [{{'name', 'files': [{{'file'}}]}}]}}): {err!r}") from None
    if not references.get(subject):
        raise ValueError(f"{manifest_path}: no reference images for subject {subject!r}; "
                         f"subjects with references: {sorted(name for name, files in references.items() if files)}")
    absent = [str(path) for path in references[subject] if not path.is_file()]
    if absent:
        raise FileNotFoundError(f"{manifest_path} lists {len(absent)} missing image(s) of {subject!r}, "
                                f"e.g. {absent[:3]}")
    return references[subject]


def read_run(dataset_dir: str | Path, samples_dir: str | Path, class_priors_dir: str | Path, run: Run,
             seed: int) -> RunInputs:
    """Everything `run` is scored on, checked; `seed` (params' seed) names the class images of its PRES seeds."""
    samples_dir, subject = Path(samples_dir), run[2]
    samples_file = samples_dir / SAMPLES
    if not samples_file.is_file():
        raise FileNotFoundError(f"{samples_file}: no samples (run the sample stage first)")
    samples = [{**row, "path": str(_image(samples_file, line, row["file"]))}
               for line, row in enumerate(_read_rows(samples_file, run, SAMPLE_KEYS), start=1)]
    pres_file = samples_dir / f"{PRES}.jsonl"
    pres_rows = _read_rows(pres_file, run, PRES_KEYS) if pres_file.is_file() else []
    return RunInputs(
        samples=samples,
        pres_images=[_image(pres_file, line, row["file"]) for line, row in enumerate(pres_rows, start=1)],
        base_images=base_class_images(SUBJECTS[subject], [row["seed"] for row in pres_rows], class_priors_dir, seed,
                                      where=str(pres_file)),
        references=read_references(dataset_dir, subject))


def evaluate_run(dataset_dir: str | Path, samples_dir: str | Path, class_priors_dir: str | Path, run: Run, *,
                 pretrained: bool, batch_size: int, seed: int, cache_root: str | Path | None = None,
                 encoders: Encoders | None = None) -> RunScores:
    """Every score of `run` (method, strategy folder, subject) against its subject's real images.

    `cache_root` (default: the embeddings cache under DREAMSTUDY_CACHE) keeps reference embeddings across
    runs; `encoders` (default: loaded per `pretrained` and `seed`) lets a caller reuse loaded models."""
    # Inputs are checked before the encoders load, so a broken tree fails in seconds, not minutes.
    inputs = read_run(dataset_dir, samples_dir, class_priors_dir, run, seed)
    if encoders is None:
        encoders = load_encoders(pretrained, device="cuda" if torch.cuda.is_available() else "cpu", seed=seed)
    cache = EmbeddingCache(encoders, default_cache_root() if cache_root is None else cache_root)
    subject = run[2]
    references = {subject: inputs.references}
    pres = preservation(inputs.pres_images, inputs.base_images, inputs.references, cache, batch_size)
    return RunScores(per_image=evaluate_samples(inputs.samples, references, encoders, batch_size, cache=cache),
                     div=prompt_diversity(inputs.samples, encoders),
                     pres=pd.DataFrame([{**dict(zip(SUBJECT_KEYS, run)), **pres}], columns=list(PRES_COLUMNS)),
                     real_images=real_images([subject], references, cache),
                     encoders=encoders.describe())


def _read_rows(file: Path, run: Run, keys: tuple[str, ...]) -> list[dict]:
    """A run's JSON lines, each checked for `keys` and against the run it is filed under."""
    try:
        rows = read_jsonl(file)
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON lines: {err}") from None
    if not rows:
        raise ValueError(f"{file}: no rows")
    expected = dict(zip(SUBJECT_KEYS, run))
    for line, row in enumerate(rows, start=1):
        require_keys(row, keys, f"{file}:{line}")
        # A row filed under another run's folder would silently mix runs in the means.
        mismatched = {key: row[key] for key, value in expected.items() if key in row and row[key] != value}
        if mismatched:
            raise ValueError(f"{file}:{line}: {mismatched} disagrees with the run {expected}")
    return rows


def _image(jsonl: Path, line: int, name: str) -> Path:
    """The image a row names, relative to the run folder ("0000.png", "pres/0000.png")."""
    path = jsonl.parent / name
    if not path.is_file():
        raise FileNotFoundError(f"{jsonl}:{line}: image {str(path)!r} not found")
    return path.resolve()
