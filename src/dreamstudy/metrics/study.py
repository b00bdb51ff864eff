"""The evaluate stage's inputs and outputs: DreamBench references, every run's samples and PRES images,
the class images, and results/metrics/ (the schema the report reads, see write_metrics)."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from dreamstudy.io import atomic_dir, read_jsonl, write_json
from dreamstudy.layout import BASELINE, CLASS_PRIORS, strategy_label
from dreamstudy.metrics.cache import EmbeddingCache, default_cache_root
from dreamstudy.metrics.encoders import Encoders, load_encoders
from dreamstudy.metrics.evaluate import (DEFAULT_THRESHOLD, SAMPLE_KEYS, aggregate, breakdown, check_references,
                                         evaluate_samples, prompt_diversity, require_keys)
from dreamstudy.metrics.memorization import real_images
from dreamstudy.metrics.preservation import preservation
from dreamstudy.metrics.statistics import bootstrap_table, wilcoxon_table
from dreamstudy.sampling.sample import PRES, SAMPLES

PRES_KEYS = ("prompt", "seed", "file")
TABLES = ("per_image", "per_prompt", "per_subject", "real_images", "breakdown", "stats", "tests")
Run = tuple[str, str, str]  # (method, strategy folder, subject)


@dataclass
class StudyMetrics:
    per_image: pd.DataFrame
    per_prompt: pd.DataFrame
    per_subject: pd.DataFrame
    real_images: pd.DataFrame
    breakdown: pd.DataFrame
    stats: pd.DataFrame
    tests: pd.DataFrame
    summary: dict
    encoders: dict


def read_references(dataset_dir: str | Path) -> dict[str, list[Path]]:
    """Subject -> its real images, from data/dreambench/manifest.json (written by fetch_data)."""
    dataset_dir = Path(dataset_dir)
    manifest_path = dataset_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        references = {subject["name"]: [dataset_dir / entry["file"] for entry in subject["files"]]
                      for subject in manifest["subjects"]}
    except FileNotFoundError:
        raise FileNotFoundError(f"{manifest_path}: no such file (run the fetch_data stage first)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{manifest_path}: not a DreamBench manifest "
                         f"({{'subjects': [{{'name', 'files': [{{'file'}}]}}]}}): {err!r}") from None
    absent = [str(path) for paths in references.values() for path in paths if not path.is_file()]
    if absent:
        raise FileNotFoundError(f"{manifest_path} lists {len(absent)} missing image(s), e.g. {absent[:3]}")
    return references


def _read_rows(file: Path, samples_root: Path, keys: tuple[str, ...]) -> list[dict]:
    """A run's JSON lines, each checked for `keys` and against the run folder it sits in."""
    try:
        rows = read_jsonl(file)
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON lines: {err}") from None
    if not rows:
        raise ValueError(f"{file}: no rows")
    folder = dict(zip(("method", "strategy", "subject"), file.parent.relative_to(samples_root).parts))
    for line, row in enumerate(rows, start=1):
        require_keys(row, keys, f"{file}:{line}")
        # A row filed under another run's folder would silently mix runs in the means.
        mismatched = {key: row[key] for key, value in folder.items() if key in row and row[key] != value}
        if mismatched:
            raise ValueError(f"{file}:{line}: {mismatched} disagrees with the folder {folder}")
    return rows


def read_samples(samples_root: str | Path, runs: list[Run]) -> list[dict]:
    """Rows of each run's {method}/{strategy}/{subject}/samples.jsonl, each with the image's absolute "path".

    Only the runs of the study's grid are read: folders left by an earlier grid are not part of it.
    """
    samples_root = Path(samples_root)
    files = [samples_root / method / strategy / subject / SAMPLES for method, strategy, subject in runs]
    absent = [str(file) for file in files if not file.is_file()]
    if absent:
        raise FileNotFoundError(f"no samples: {absent[:3]} missing (run the sample stage first)")
    return [{**row, "path": str((file.parent / row["file"]).resolve())}
            for file in files for row in _read_rows(file, samples_root, SAMPLE_KEYS)]


def read_pres(samples_root: str | Path, runs: list[Run]) -> dict[Run, list[dict]]:
    """Each run's PRES rows (pres.jsonl, with "path"); a run without pres.jsonl is left out (pres NaN)."""
    samples_root = Path(samples_root)
    pres = {}
    for run in runs:
        file = samples_root.joinpath(*run) / f"{PRES}.jsonl"
        if not file.is_file():
            continue
        rows = _read_rows(file, samples_root, PRES_KEYS)
        pres[run] = [{**row, "path": str(_pres_image(file, line, row["file"]))}
                     for line, row in enumerate(rows, start=1)]
    return pres


def _pres_image(pres_jsonl: Path, line: int, name: str) -> Path:
    """The image a row names, relative to the run folder ("pres/0000.png")."""
    path = pres_jsonl.parent / name
    if not path.is_file():
        raise FileNotFoundError(f"{pres_jsonl}:{line}: image {str(path)!r} not found")
    return path.resolve()


def grid_runs(params, study: str) -> list[Run]:
    """The (method, strategy folder, subject) runs of the main study or of the ablation grid (its baseline,
    `none` once per subject, and every strategy at every strength)."""
    if study == "ablation":
        a = params.ablation
        labels = [BASELINE, *(strategy_label(s, x) for s, x in itertools.product(a.strategies, a.strengths))]
        return list(itertools.product([a.method], labels, a.subjects))
    return list(itertools.product(params.train.methods, params.aug.strategies, params.data.subjects))


def evaluate_study(dataset_dir: str | Path, samples_root: str | Path, runs: list[Run], pretrained: bool,
                   batch_size: int, seed: int, *, memorization_threshold: float = DEFAULT_THRESHOLD,
                   class_priors_dir: str | Path = CLASS_PRIORS, cache_root: str | Path | None = None,
                   encoders: Encoders | None = None) -> StudyMetrics:
    """Every score of the runs (method, strategy, subject) against the subjects' real images.

    `cache_root` (default: the embeddings cache under DREAMSTUDY_CACHE) keeps reference embeddings across
    runs; `encoders` (default: loaded per `pretrained` and `seed`) lets a caller reuse loaded models."""
    # Inputs are checked before the encoders load, so a broken tree fails in seconds, not minutes.
    samples = read_samples(samples_root, runs)
    pres_runs = read_pres(samples_root, runs)
    references = read_references(dataset_dir)
    check_references(samples, references)
    if encoders is None:
        encoders = load_encoders(pretrained, device="cuda" if torch.cuda.is_available() else "cpu", seed=seed)
    cache = EmbeddingCache(encoders, default_cache_root() if cache_root is None else cache_root, batch_size)

    per_image = evaluate_samples(samples, references, encoders, batch_size, cache=cache,
                                 memorization_threshold=memorization_threshold)
    pres = preservation(pres_runs, references, cache, class_priors_dir, seed)
    per_prompt, per_subject, summary = aggregate(per_image, prompt_diversity(samples, encoders), pres)
    real = real_images(per_image["subject"], references, cache)
    summary["real_images"] = {score: float(real[score].mean()) for score in ("dino", "clip_i")}
    return StudyMetrics(per_image=per_image, per_prompt=per_prompt, per_subject=per_subject, real_images=real,
                        breakdown=breakdown(per_image), stats=bootstrap_table(per_prompt, per_subject, seed),
                        tests=wilcoxon_table(per_subject), summary=summary, encoders=encoders.describe())


def json_numbers(value):
    """NaN and infinities -> None, recursively: summary.json stays valid JSON for DVC."""
    if isinstance(value, dict):
        return {key: json_numbers(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(out_dir: str | Path, metrics: StudyMetrics) -> None:
    """results/metrics/ appears whole: the CSVs of TABLES, summary.json (DVC metrics) and encoders.json."""
    with atomic_dir(out_dir) as tmp:
        for name in TABLES:
            getattr(metrics, name).to_csv(tmp / f"{name}.csv", index=False)
        write_json(tmp / "summary.json", json_numbers(metrics.summary))
        write_json(tmp / "encoders.json", metrics.encoders)
