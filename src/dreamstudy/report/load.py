"""Read what the evaluate and sample stages left in results/ into one checked `Results` for the report.

The report depends on results/ alone, so every file it needs is checked here, before anything is drawn:
a missing or malformed input fails with an error naming the file. Empty cells are accepted only where the
results schema allows NaN (`NULLABLE`: DIV with < 2 images per prompt, PRES without pres.jsonl, PRES of the
base model without class images; real_images.csv of a subject with a single photo); tests.csv has rows only
when the grid has the `none` baseline, and may then be absent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dreamstudy.data.dreambench import PROMPT_KINDS
from dreamstudy.errors import StudyError
from dreamstudy.io import read_jsonl
from dreamstudy.layout import BASELINE
from dreamstudy.metrics.registry import MEM_DINO, MEMORIZED, METRICS
from dreamstudy.metrics.tables import REAL_IMAGE_SCORES, REPORTED, SCORES, read_table
from dreamstudy.models.loading import RANDOM_MODELS

LABELS = {m.name: m.label for m in METRICS}  # column -> label in figures and tables
MAIN_METRICS = [m for m in METRICS if m.table == "main"]  # DreamBench's scores: main.tex, per_subject.tex
OVERFITTING_METRICS = [m for m in METRICS if m.table == "overfitting"]  # overfitting.tex
# The metrics with a bootstrap CI in stats.csv (and a test in tests.csv), in table order.
INTERVAL_METRICS = [m for m in METRICS if m.interval]
STAT_METRICS = {m.name: m.label for m in INTERVAL_METRICS}
NULLABLE = tuple(m.name for m in METRICS if m.nullable)
# breakdown.csv's groups in DreamBench's order; `live` groups may be written as booleans
GROUP_ORDER = [*(("prompt_kind", kind) for kind, _ in PROMPT_KINDS["live"]), ("live", "live"), ("live", "object")]
LIVE_GROUPS = {"true": "live", "1": "live", "false": "object", "0": "object"}
RANDOM_INIT_LABEL = "Random-init encoders: numbers are not comparable to published ones."
# One per built-in random-init model (dreamstudy.models.loading.RANDOM_MODELS) the images came from.
RANDOM_MODEL_LABEL = "Images from the built-in random-init model '{model}', not Stable Diffusion's weights."
# DreamBench's protocol (the DreamBooth paper's evaluation, as Custom Diffusion's script): 50 DDIM steps.
PROTOCOL_SAMPLING = ("ddim", 50)
SAMPLING_DEVIATION_LABEL = "Sampling deviates from the DreamBench protocol (50 DDIM steps): {sampling}."

RUN_KEYS = ["method", "strategy"]
SUBJECT_KEYS = [*RUN_KEYS, "subject"]
SAMPLE_KEYS = ["prompt_index", "image_index", "prompt", "file", "scheduler", "num_inference_steps"]
# Read as text even when a name looks like a number, so "1" stays a subject and not an integer.
TEXT_COLUMNS = dict.fromkeys([*SUBJECT_KEYS, "class", "prompt", "prompt_kind", "by", "group", "metric",
                              "baseline", "test", "note"], str)


class ResultsError(StudyError, ValueError):
    """results/ lacks a file the report needs, or a file lacks what it must hold."""


@dataclass(frozen=True)
class Encoders:
    """encoders.json: which CLIP, DINO and LPIPS scored the images, and whether their weights were real."""

    pretrained: bool
    clip: str
    dino: str
    lpips: str


@dataclass(frozen=True, eq=False)
class Results:
    """Everything the report draws from: metric tables, statistics, sample index, encoder provenance."""

    per_image: pd.DataFrame    # one row per generated image: scores, mem_dino, memorized
    per_subject: pd.DataFrame  # one row per (method, strategy, subject): means, div, pres, pres_base, memorized
    stats: pd.DataFrame        # (method, strategy, metric): mean, ci_low, ci_high, confidence, n_subjects
    tests: pd.DataFrame        # (method, strategy, metric) vs the baseline: mean_diff, p_value, significant, alpha
    real_images: pd.DataFrame  # one row per subject: dino, clip_i among its own real photos
    breakdown: pd.DataFrame    # (method, strategy, by, group, metric): value
    samples: pd.DataFrame      # one row per sample image: method, strategy, subject, prompt_index,
                               # image_index, prompt, model (the base model it came from), scheduler,
                               # num_inference_steps, path
    encoders: Encoders
    memorization_threshold: float  # eval.memorization_threshold, which set per_image's `memorized`
    confidence: float          # stats.csv's coverage of every interval (eval.confidence of the gather)
    alpha: float | None        # tests.csv's significance level (eval.alpha); None when there are no tests

    @property
    def methods(self) -> list[str]:
        return _in_order_of_appearance(self.per_subject["method"])

    @property
    def strategies(self) -> list[str]:
        """The baseline `none` first (what the others are compared with), then the others as they appear."""
        strategies = _in_order_of_appearance(self.per_subject["strategy"])
        return sorted(strategies, key=lambda strategy: strategy != BASELINE)  # stable: keeps the others' order

    @property
    def runs(self) -> list[tuple[str, str]]:
        """(method, strategy) of every run, by method, then strategy in the order of `strategies`."""
        present = set(self.per_subject[RUN_KEYS].itertuples(index=False, name=None))
        return [(m, s) for m in self.methods for s in self.strategies if (m, s) in present]

    @property
    def subjects(self) -> list[str]:
        return _in_order_of_appearance(self.per_subject["subject"])

    @property
    def models(self) -> list[str]:
        """The base models the samples came from."""
        return _in_order_of_appearance(self.samples["model"].dropna())

    @property
    def sampling(self) -> list[tuple[str, int]]:
        """The (scheduler, denoising steps) the samples were drawn with."""
        pairs = zip(self.samples["scheduler"], self.samples["num_inference_steps"])
        return _in_order_of_appearance((scheduler, int(steps)) for scheduler, steps in pairs)

    @property
    def ci_label(self) -> str:
        """'95% CI' for a confidence of 0.95."""
        return f"{self.confidence * 100:g}% CI"

    def caption(self, text: str, sep: str = " ") -> str:
        """`text`, labelled when the images or the scores come from random weights, and when the images were
        sampled otherwise than by DreamBench's protocol."""
        labels = [] if self.encoders.pretrained else [RANDOM_INIT_LABEL]
        labels += [RANDOM_MODEL_LABEL.format(model=model) for model in self.models if model in RANDOM_MODELS]
        deviations = [f"{scheduler}, {steps} steps" for scheduler, steps in self.sampling
                      if (scheduler, steps) != PROTOCOL_SAMPLING]
        if deviations:
            labels.append(SAMPLING_DEVIATION_LABEL.format(sampling="; ".join(deviations)))
        return sep.join([text, *labels])


def load_results(results_dir: str | Path, *, memorization_threshold: float) -> Results:
    """Every input of the report from `results_dir` (results/ or results/ablation/), checked.

    `memorization_threshold` is params' eval.memorization_threshold: per_image.csv's `memorized` must
    agree with it, or the scores are stale (evaluated under another threshold).
    """
    metrics_dir = Path(results_dir) / "metrics"
    per_subject = _read_per_subject(metrics_dir / "per_subject.csv")
    per_image = _read_per_image(metrics_dir / "per_image.csv", memorization_threshold)
    runs = per_subject[RUN_KEYS].drop_duplicates()
    stats_path, tests_path = metrics_dir / "stats.csv", metrics_dir / "tests.csv"
    stats, tests = _read_stats(stats_path, runs), _read_tests(tests_path, runs)
    return Results(
        per_image=per_image,
        per_subject=per_subject,
        stats=stats,
        tests=tests,
        real_images=_read_real_images(metrics_dir / "real_images.csv", per_subject["subject"]),
        breakdown=_read_breakdown(metrics_dir / "breakdown.csv"),
        samples=_read_samples(Path(results_dir) / "samples", per_subject),
        encoders=_read_encoders(metrics_dir / "encoders.json"),
        memorization_threshold=memorization_threshold,
        confidence=_level(stats, stats_path, "confidence"),
        alpha=None if tests.empty else _level(tests, tests_path, "alpha"),
    )


def _read_per_subject(path: Path) -> pd.DataFrame:
    table = _read_csv(path, [*SUBJECT_KEYS, "class", *(m.name for m in REPORTED)])
    _to_numbers(table, path, [m.name for m in REPORTED if not m.nullable], nan_ok=False)
    _to_numbers(table, path, [m.name for m in REPORTED if m.nullable], nan_ok=True)
    _no_repeats(table, path, SUBJECT_KEYS)
    return table


def _read_per_image(path: Path, threshold: float) -> pd.DataFrame:
    table = _read_csv(path, [*SUBJECT_KEYS, "prompt_index", *SCORES, MEM_DINO.name, MEMORIZED.name])
    _to_numbers(table, path, [*SCORES, MEM_DINO.name], nan_ok=False)
    _to_flags(table, path, [MEMORIZED.name])
    stale = table[MEMORIZED.name] != (table[MEM_DINO.name] > threshold)
    if stale.any():
        raise ResultsError(f"{path}: `memorized` disagrees with mem_dino > eval.memorization_threshold "
                           f"({threshold}) on line(s) {_csv_lines(stale)}: rerun the gather stage")
    return table


def _read_stats(path: Path, runs: pd.DataFrame) -> pd.DataFrame:
    table = _read_csv(path, [*RUN_KEYS, "metric", "mean", "ci_low", "ci_high", "confidence", "n_subjects"])
    _to_numbers(table, path, ["mean"], nan_ok=table["metric"].isin(NULLABLE))
    _to_numbers(table, path, ["confidence"], nan_ok=False)
    _to_numbers(table, path, ["ci_low", "ci_high"], nan_ok=True)  # no interval around a single value
    _no_repeats(table, path, [*RUN_KEYS, "metric"])
    expected = runs.merge(pd.DataFrame({"metric": list(STAT_METRICS)}), how="cross")
    absent = expected.merge(table[[*RUN_KEYS, "metric"]], how="left", indicator=True).query("_merge == 'left_only'")
    if not absent.empty:
        raise ResultsError(f"{path}: no row for (method, strategy, metric) "
                           f"{list(absent[[*RUN_KEYS, 'metric']].itertuples(index=False, name=None))}")
    return table


def _read_tests(path: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """tests.csv, or no tests when the grid has no baseline to test against (then the file may be absent)."""
    columns = [*RUN_KEYS, "baseline", "metric", "mean_diff", "p_value", "test", "n_subjects", "significant",
               "alpha"]
    if not path.is_file() and not (runs["strategy"] == BASELINE).any():
        return pd.DataFrame(columns=columns)
    table = _read_csv(path, columns, allow_empty=True)
    _to_numbers(table, path, ["mean_diff", "p_value"], nan_ok=True)  # NaN: too few subjects, or no difference
    _to_numbers(table, path, ["alpha"], nan_ok=False)
    _to_flags(table, path, ["significant"])
    _no_repeats(table, path, [*RUN_KEYS, "baseline", "metric"])
    return table


def _level(table: pd.DataFrame, path: Path, column: str) -> float:
    """The one value of `column` (a confidence or significance level) on every row of a non-empty `table`:
    the report states it once for all the numbers."""
    levels = table[column].unique()
    if len(levels) != 1 or not 0 < levels[0] < 1:
        raise ResultsError(f"{path}: `{column}` must be one level in (0, 1) on every row, found "
                           f"{sorted(levels.tolist())}: rerun the gather stage")
    return float(levels[0])


def _read_real_images(path: Path, subjects: pd.Series) -> pd.DataFrame:
    table = _read_csv(path, ["subject", *REAL_IMAGE_SCORES])
    _to_numbers(table, path, list(REAL_IMAGE_SCORES), nan_ok=True)  # NaN: a subject with a single photo has no pair
    _no_repeats(table, path, ["subject"])
    absent = sorted(set(subjects) - set(table["subject"]))
    if absent:
        raise ResultsError(f"{path}: no row for subject(s) {absent}")
    return table[table["subject"].isin(set(subjects))]  # the upper bound of this study's subjects only


def _read_breakdown(path: Path) -> pd.DataFrame:
    """breakdown.csv with the `live` groups named live/object, rows in the order of GROUP_ORDER."""
    table = _read_csv(path, [*RUN_KEYS, "by", "group", "metric", "value"])
    _to_numbers(table, path, ["value"], nan_ok=table["metric"].isin(NULLABLE))
    live = table["by"] == "live"
    table.loc[live, "group"] = table.loc[live, "group"].str.lower().replace(LIVE_GROUPS)
    _no_repeats(table, path, [*RUN_KEYS, "by", "group", "metric"])
    rank = {key: position for position, key in enumerate(GROUP_ORDER)}
    order = [rank.get(key, len(rank)) for key in zip(table["by"], table["group"])]
    return table.iloc[sorted(range(len(table)), key=order.__getitem__)].reset_index(drop=True)


def _read_csv(path: Path, columns: list[str], allow_empty: bool = False) -> pd.DataFrame:
    return read_table(path, columns, text=TEXT_COLUMNS, writer="the gather stage", error=ResultsError,
                      allow_empty=allow_empty)


def _to_numbers(table: pd.DataFrame, path: Path, columns: list[str], nan_ok: bool | pd.Series) -> None:
    """`columns` as floats, in place. Text is an error, and so is an empty cell where `nan_ok` is False
    (a bool, or a per-row mask for long files whose rows hold different metrics)."""
    values = table[columns].apply(pd.to_numeric, errors="coerce")
    not_number = (table[columns].notna() & values.isna()).any(axis=1)
    empty = values.isna().any(axis=1) & ~pd.Series(nan_ok, index=table.index, dtype=bool)
    if (not_number | empty).any():
        raise ResultsError(f"{path}: missing or non-numeric {columns} on line(s) {_csv_lines(not_number | empty)}")
    table[columns] = values.astype(float)


def _to_flags(table: pd.DataFrame, path: Path, columns: list[str]) -> None:
    """`columns` as bools, in place, from True/False (as pandas writes them) or 1/0."""
    for column in columns:
        flags = table[column].astype(str).str.lower().map({"true": True, "false": False, "1": True, "0": False})
        if flags.isna().any():
            raise ResultsError(f"{path}: `{column}` must be True or False on line(s) {_csv_lines(flags.isna())}")
        table[column] = flags.astype(bool)


def _no_repeats(table: pd.DataFrame, path: Path, keys: list[str]) -> None:
    repeated = table.duplicated(keys)
    if repeated.any():
        raise ResultsError(f"{path}: repeated ({', '.join(keys)}) on line(s) {_csv_lines(repeated)}")


def _read_encoders(path: Path) -> Encoders:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: missing (written by the gather stage)") from None
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path}: not valid JSON: {err}") from None
    expected = {"pretrained": bool, "clip": str, "dino": str, "lpips": str}
    if not isinstance(raw, dict) or any(not isinstance(raw.get(k), t) for k, t in expected.items()):
        raise ResultsError(f'{path}: expected {{"pretrained": bool, "clip": str, "dino": str, "lpips": str}}, '
                           f"got {raw!r}")
    return Encoders(**{key: raw[key] for key in expected})


def _read_samples(samples_dir: Path, per_subject: pd.DataFrame) -> pd.DataFrame:
    """The sample index of every (method, strategy, subject) that has scores, each image checked."""
    rows = []
    for method, strategy, subject in per_subject[SUBJECT_KEYS].itertuples(index=False):
        folder = samples_dir / method / strategy / subject
        index = folder / "samples.jsonl"
        entries = _read_sample_index(index)
        for number, entry in enumerate(entries, start=1):
            missing = [key for key in SAMPLE_KEYS if key not in entry]
            if missing:
                raise ResultsError(f"{index}: row {number} lacks {missing}: rerun the sample stage")
            steps = entry["num_inference_steps"]
            if not isinstance(steps, int) or isinstance(steps, bool) or not isinstance(entry["scheduler"], str):
                raise ResultsError(f"{index}: row {number}: expected a scheduler name and an integer "
                                   f"num_inference_steps, got {entry['scheduler']!r}, {steps!r}")
            image = folder / entry["file"]
            if not image.is_file():
                raise ResultsError(f"{image}: missing (listed in {index})")
            rows.append({"method": method, "strategy": strategy, "subject": subject,
                         "prompt_index": int(entry["prompt_index"]), "image_index": int(entry["image_index"]),
                         "prompt": entry["prompt"], "model": entry.get("model"),
                         "scheduler": entry["scheduler"], "num_inference_steps": steps, "path": image})
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


def _in_order_of_appearance(column: Iterable) -> list:
    return list(dict.fromkeys(column))
