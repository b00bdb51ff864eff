"""Where the stages of a study read and write. The ablation is the same pipeline under ablation/
folders, its strategies labelled with their strength ("classic@0.5"), so one set of stage CLIs serves both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STUDIES = ("main", "ablation")
BASELINE = "none"  # the original images: what every strategy is compared with, in both studies


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
CLASS_PRIORS = Path("data/class_priors")


def class_folder(root: str | Path, class_name: str) -> Path:
    """Where the class_priors stage puts the class images of `class_name` ("stuffed animal" -> stuffed_animal)."""
    return Path(root) / class_name.replace(" ", "_")
