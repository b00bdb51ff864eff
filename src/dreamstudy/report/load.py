"""Read what the evaluate and sample stages left in results/ into one checked `Results` for the report.

The report depends on results/ alone, so every file it needs is checked here, before anything is drawn:
a missing or malformed input fails with an error naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dreamstudy.io import read_jsonl

METRICS = {"dino": "DINO", "clip_i": "CLIP-I", "clip_t": "CLIP-T"}  # column -> label in figures and tables
RANDOM_INIT_LABEL = "Random-init encoders: numbers are not comparable to published ones."
TINY_MODEL_LABEL = "Images from the built-in tiny random-init model, not Stable Diffusion."

RUN_KEYS = ["method", "strategy"]
PER_IMAGE_COLUMNS = [*RUN_KEYS, "subject", *METRICS]
PER_SUBJECT_COLUMNS = [*RUN_KEYS, "subject", "class", *METRICS]
SAMPLE_KEYS = ["prompt_index", "image_index", "prompt", "file"]
# Read as text even when a name looks like a number, so "1" stays a subject and not an integer.
TEXT_COLUMNS = dict.fromkeys([*RUN_KEYS, "subject", "class", "prompt"], str)


class ResultsError(ValueError):
    """results/ lacks a file the report needs, or a file lacks what it must hold."""


@dataclass(frozen=True)
class Encoders:
    """encoders.json: which CLIP and DINO scored the images, and whether their weights were real."""

    pretrained: bool
    clip: str
    dino: str


@dataclass(frozen=True, eq=False)
class Results:
    """Everything the report draws from: metric tables, sample index, encoder provenance."""

    per_image: pd.DataFrame    # one row per generated image, with its three scores
    per_subject: pd.DataFrame  # one row per (method, strategy, subject)
    samples: pd.DataFrame      # one row per sample image: method, strategy, subject, prompt_index,
                               # image_index, prompt, model (the base model it came from), path
    encoders: Encoders

    @property
    def methods(self) -> list[str]:
        return _in_order_of_appearance(self.per_subject["method"])

    @property
    def strategies(self) -> list[str]:
        return _in_order_of_appearance(self.per_subject["strategy"])

    @property
    def subjects(self) -> list[str]:
        return _in_order_of_appearance(self.per_subject["subject"])

    def caption(self, text: str, sep: str = " ") -> str:
        """`text`, labelled when the images or the scores come from random weights."""
        labels = [] if self.encoders.pretrained else [RANDOM_INIT_LABEL]
        if (self.samples["model"] == "tiny").any():
            labels.append(TINY_MODEL_LABEL)
        return sep.join([text, *labels])


def load_results(results_dir: str | Path) -> Results:
    results_dir = Path(results_dir)
    metrics_dir = results_dir / "metrics"
    per_subject = _read_scores(metrics_dir / "per_subject.csv", PER_SUBJECT_COLUMNS)
    duplicated = per_subject.duplicated([*RUN_KEYS, "subject"])
    if duplicated.any():
        raise ResultsError(f"{metrics_dir / 'per_subject.csv'}: repeated (method, strategy, subject) "
                           f"on line(s) {_csv_lines(duplicated)}")
    return Results(
        per_image=_read_scores(metrics_dir / "per_image.csv", PER_IMAGE_COLUMNS),
        per_subject=per_subject,
        samples=_read_samples(results_dir / "samples", per_subject),
        encoders=_read_encoders(metrics_dir / "encoders.json"),
    )


def _read_scores(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise ResultsError(f"{path}: missing (written by the evaluate stage)")
    table = pd.read_csv(path, dtype=TEXT_COLUMNS)
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise ResultsError(f"{path}: missing column(s) {missing}")
    if table.empty:
        raise ResultsError(f"{path}: no rows")
    scores = table[list(METRICS)].apply(pd.to_numeric, errors="coerce")
    unscored = scores.isna().any(axis=1)
    if unscored.any():
        raise ResultsError(f"{path}: missing or non-numeric scores on line(s) {_csv_lines(unscored)}")
    table[list(METRICS)] = scores
    return table


def _read_encoders(path: Path) -> Encoders:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: missing (written by the evaluate stage)") from None
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path}: not valid JSON: {err}") from None
    expected = {"pretrained": bool, "clip": str, "dino": str}
    if not isinstance(raw, dict) or any(not isinstance(raw.get(k), t) for k, t in expected.items()):
        raise ResultsError(f'{path}: expected {{"pretrained": bool, "clip": str, "dino": str}}, got {raw!r}')
    return Encoders(**{key: raw[key] for key in expected})


def _read_samples(samples_dir: Path, per_subject: pd.DataFrame) -> pd.DataFrame:
    """The sample index of every (method, strategy, subject) that has scores, each image checked."""
    rows = []
    for method, strategy, subject in per_subject[[*RUN_KEYS, "subject"]].itertuples(index=False):
        folder = samples_dir / method / strategy / subject
        index = folder / "samples.jsonl"
        entries = _read_sample_index(index)
        for number, entry in enumerate(entries, start=1):
            missing = [key for key in SAMPLE_KEYS if key not in entry]
            if missing:
                raise ResultsError(f"{index}: row {number} lacks {missing}")
            image = folder / entry["file"]
            if not image.is_file():
                raise ResultsError(f"{image}: missing (listed in {index})")
            rows.append({"method": method, "strategy": strategy, "subject": subject,
                         "prompt_index": int(entry["prompt_index"]), "image_index": int(entry["image_index"]),
                         "prompt": entry["prompt"], "model": entry.get("model"), "path": image})
    return pd.DataFrame(rows)


def _read_sample_index(index: Path) -> list[dict]:
    try:
        entries = read_jsonl(index)
    except FileNotFoundError:
        raise ResultsError(f"{index}: missing (written by the sample stage)") from None
    except json.JSONDecodeError as err:
        raise ResultsError(f"{index}: not valid JSON lines: {err}") from None
    if not entries:
        raise ResultsError(f"{index}: no samples listed")
    return entries


def _csv_lines(rows: pd.Series) -> list[int]:
    return [int(i) + 2 for i in rows.index[rows]]  # 1-based, after the header line


def _in_order_of_appearance(column: pd.Series) -> list[str]:
    return list(dict.fromkeys(column))
