"""One run's score folder, results/scores/{method}/{strategy}/{subject}/: what the evaluate stage writes and
the gather stage reads (pandas only: the gather loads no model).

    per_image.csv    one row per sample: its scores, not yet the thresholded `memorized` (the gather applies
                     eval.memorization_threshold, so that changing it re-embeds nothing)
    div.csv          DIV per prompt
    pres.csv         PRES and pres_base, one row
    real_images.csv  the subject's "Real images" row
    encoders.json    which encoders scored the images
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dreamstudy.io import atomic_dir, write_json
from dreamstudy.layout import Run
from dreamstudy.metrics.tables import (
    DIV_COLUMNS,
    IMAGE_SCORE_COLUMNS,
    PRES_COLUMNS,
    REAL_IMAGE_COLUMNS,
    SUBJECT_KEYS,
    read_table,
)

COLUMNS = {"per_image": IMAGE_SCORE_COLUMNS, "div": DIV_COLUMNS, "pres": PRES_COLUMNS,
           "real_images": REAL_IMAGE_COLUMNS}
ENCODERS = "encoders.json"
# Read as text even when a name looks like a number; `live` is a flag; every other column is a number.
TEXT_COLUMNS = dict.fromkeys([*SUBJECT_KEYS, "class", "prompt_kind", "prompt", "file"], str)
FLAGS = ("live",)


@dataclass
class RunScores:
    per_image: pd.DataFrame
    div: pd.DataFrame
    pres: pd.DataFrame
    real_images: pd.DataFrame
    encoders: dict


def write_scores(folder: str | Path, scores: RunScores) -> None:
    """The score folder appears whole: a CSV per table of COLUMNS and encoders.json."""
    with atomic_dir(folder) as tmp:
        for name in COLUMNS:
            getattr(scores, name).to_csv(tmp / f"{name}.csv", index=False)
        write_json(tmp / ENCODERS, scores.encoders)


def read_scores(folder: str | Path, run: Run) -> RunScores:
    """`run`'s score folder, each file checked: present, with the columns of COLUMNS (in that order), numbers
    where numbers belong, and rows of `run` alone (a file copied from another run would mix runs)."""
    folder = Path(folder)
    tables = {name: _read_table(folder / f"{name}.csv", columns, run) for name, columns in COLUMNS.items()}
    return RunScores(**tables, encoders=_read_encoders(folder / ENCODERS))


def _read_table(file: Path, columns: tuple[str, ...], run: Run) -> pd.DataFrame:
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing (written by the evaluate stage)")
    table = read_table(file, columns, text=TEXT_COLUMNS, writer="the evaluate stage")[list(columns)]
    expected = {key: value for key, value in zip(SUBJECT_KEYS, run) if key in table.columns}
    foreign = ~table[list(expected)].eq(pd.Series(expected)).all(axis=1)
    if foreign.any():
        raise ValueError(f"{file}: line {int(foreign.idxmax()) + 2} is not of the run {expected}")
    malformed = [column for column in columns if column not in TEXT_COLUMNS and not (
        pd.api.types.is_bool_dtype if column in FLAGS else pd.api.types.is_numeric_dtype)(table[column])]
    if malformed:
        raise ValueError(f"{file}: column(s) {malformed} must hold numbers (flags {list(FLAGS)}: True or False)")
    return table


def _read_encoders(file: Path) -> dict:
    try:
        encoders = json.loads(file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{file}: missing (written by the evaluate stage)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON: {err}") from None
    return encoders
