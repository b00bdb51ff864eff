"""The evaluate stage's inputs and outputs: DreamBench references, every run's samples, results/metrics/."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from dreamstudy.io import atomic_dir, read_jsonl, write_json
from dreamstudy.layout import strategy_label
from dreamstudy.metrics.encoders import load_encoders
from dreamstudy.metrics.evaluate import SAMPLE_KEYS, aggregate, check_references, evaluate_samples, require_keys


@dataclass
class StudyMetrics:
    per_image: pd.DataFrame
    per_prompt: pd.DataFrame
    per_subject: pd.DataFrame
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


def read_samples(samples_root: str | Path, runs: list[tuple[str, str, str]]) -> list[dict]:
    """Rows of each run's {method}/{strategy}/{subject}/samples.jsonl, each with the image's absolute "path".

    Only the runs of the study's grid are read: folders left by an earlier grid are not part of it.
    """
    samples_root = Path(samples_root)
    files = [samples_root / method / strategy / subject / "samples.jsonl" for method, strategy, subject in runs]
    absent = [str(file) for file in files if not file.is_file()]
    if absent:
        raise FileNotFoundError(f"no samples: {absent[:3]} missing (run the sample stage first)")
    samples = []
    for file in files:
        try:
            rows = read_jsonl(file)
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}: not valid JSON lines: {err}") from None
        if not rows:
            raise ValueError(f"{file}: no sample rows")
        folder = dict(zip(("method", "strategy", "subject"), file.parent.relative_to(samples_root).parts))
        for line, row in enumerate(rows, start=1):
            require_keys(row, SAMPLE_KEYS, f"{file}:{line}")
            # A row filed under another run's folder would silently mix runs in the means.
            mismatched = {key: row[key] for key, value in folder.items() if row[key] != value}
            if mismatched:
                raise ValueError(f"{file}:{line}: {mismatched} disagrees with the folder {folder}")
            samples.append({**row, "path": str((file.parent / row["file"]).resolve())})
    return samples


def grid_runs(params, study: str) -> list[tuple[str, str, str]]:
    """The (method, strategy folder, subject) runs of the main study or of the ablation grid."""
    if study == "ablation":
        a = params.ablation
        labels = [strategy_label(s, x) for s, x in itertools.product(a.strategies, a.strengths)]
        return list(itertools.product([a.method], labels, a.subjects))
    return list(itertools.product(params.train.methods, params.aug.strategies, params.data.subjects))


def evaluate_study(dataset_dir: str | Path, samples_root: str | Path, runs: list[tuple[str, str, str]],
                   pretrained: bool, batch_size: int, seed: int) -> StudyMetrics:
    """Score every sampled image of the runs (method, strategy, subject) against the subject's references."""
    # Inputs are checked before the encoders load, so a broken tree fails in seconds, not minutes.
    samples = read_samples(samples_root, runs)
    references = read_references(dataset_dir)
    check_references(samples, references)
    encoders = load_encoders(pretrained, device="cuda" if torch.cuda.is_available() else "cpu", seed=seed)
    per_image = evaluate_samples(samples, references, encoders, batch_size)
    per_prompt, per_subject, summary = aggregate(per_image)
    return StudyMetrics(per_image, per_prompt, per_subject, summary, encoders.describe())


def write_metrics(out_dir: str | Path, metrics: StudyMetrics) -> None:
    """results/metrics/ appears whole: the three CSVs, summary.json (DVC metrics) and encoders.json."""
    with atomic_dir(out_dir) as tmp:
        for name in ("per_image", "per_prompt", "per_subject"):
            getattr(metrics, name).to_csv(tmp / f"{name}.csv", index=False)
        write_json(tmp / "summary.json", metrics.summary)
        write_json(tmp / "encoders.json", metrics.encoders)
