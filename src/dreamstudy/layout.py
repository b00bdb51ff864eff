"""Where the stages of a study read and write. The ablation is the same pipeline under ablation/
folders, its strategies labelled with their strength ("classic@0.5"), so one set of stage CLIs serves both.
The multi-concept study's runs are keyed the same way, under multi/ folders: its variant where a method goes,
the original images (`none`) as strategy, and a pair's key ("dog+bear_plushie") as subject."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STUDIES = ("main", "ablation", "multi")
BASELINE = "none"  # the original images: what every strategy is compared with, in both studies
Run = tuple[str, str, str]  # (method or multi-concept variant, strategy folder, subject or pair key)
PAIR_JOIN = "+"  # a run's subjects in its key: "dog" alone, "dog+bear_plushie" for a pair (no subject has a +)


def pair_key(subjects) -> str:
    """The name of a set of subjects where a run names its subject: the subjects in their params order."""
    return PAIR_JOIN.join(subjects)


def key_subjects(key: str) -> list[str]:
    """The subjects of a run's subject key: ["dog"] or ["dog", "bear_plushie"]."""
    return key.split(PAIR_JOIN)


def strategy_label(strategy: str, strength: float | None) -> str:
    """The folder name of a strategy: itself in the main study, with its strength in the ablation (where
    the baseline, which has no strength, is itself too)."""
    if strength is None or strategy == BASELINE:
        return strategy
    return f"{strategy}@{float(strength)}"  # as DVC writes ${item.strength}


def parse_strategy_label(label: str) -> tuple[str, float | None]:
    strategy, _, strength = label.partition("@")
    return strategy, float(strength) if strength else None


@dataclass(frozen=True)
class Layout:
    study: str = "main"

    def _path(self, top: str, *rest: str) -> Path:
        return Path(top, *rest) if self.study == "main" else Path(top, self.study, *rest)

    def augmented(self, strategy: str, subject: str) -> Path:
        return self._path("data", "augmented", strategy, subject)

    def class_priors(self, subject: str) -> Path:
        """The base model's "a photo of a {class}" images for `subject`'s class (one folder per subject, so that
        a subject's stages depend on its class's images alone; subjects of one class get identical images)."""
        return self._path("data", "class_priors", subject)

    def prior_set(self, method: str, subject: str) -> Path:
        """What a run's prior preservation trains with: the class images' hashes and the loss weight, or
        nothing when its method has none (then priors settings never rerun its training)."""
        return self._path("data", "prior_sets", method, f"{subject}.json")

    def contact_sheet(self, strategy: str, subject: str) -> Path:
        return self._path("results", "augment", strategy, f"{subject}.png")

    def run(self, method: str, strategy: str, subject: str) -> str:
        return f"{method}/{strategy}/{subject}"

    def model(self, method: str, strategy: str, subject: str) -> Path:
        return self._path("models", self.run(method, strategy, subject))

    def checkpoint(self, method: str, strategy: str, subject: str) -> Path:
        return self._path("checkpoints", self.run(method, strategy, subject))

    def train_log(self, method: str, strategy: str, subject: str) -> Path:
        return self._path("results", "train", self.run(method, strategy, subject))

    def scores(self, method: str, strategy: str, subject: str) -> Path:
        """One run's per-image scores, DIV, PRES and the subject's real-image row (the evaluate stage)."""
        return self._path("results", "scores", self.run(method, strategy, subject))

    def retention(self, variant: str, pair: str) -> Path:
        """Each subject of `pair` alone, from the pair's `variant` model, on its main-study prompts and seeds:
        one samples folder per subject inside (the multi-concept study's retention)."""
        return self._path("results", "retention", variant, pair)

    @property
    def samples_root(self) -> Path:
        return self._path("results", "samples")

    def samples(self, method: str, strategy: str, subject: str) -> Path:
        return self.samples_root / self.run(method, strategy, subject)

    @property
    def metrics(self) -> Path:
        return self._path("results", "metrics")

    @property
    def results(self) -> Path:
        return self._path("results")

    @property
    def paper(self) -> Path:
        return self._path("paper")


DATASET = Path("data/dreambench")


def cache_dir() -> Path:
    """What is built or downloaded once per machine (models, DreamBench's archive, embeddings): outside the
    repository, so DVC never tracks it; $DREAMSTUDY_CACHE, else ~/.cache/dreamstudy."""
    return Path(os.environ.get("DREAMSTUDY_CACHE", "~/.cache/dreamstudy")).expanduser()
