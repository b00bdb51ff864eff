"""Each study's grid, defined once: the values each item of a stage's command may take (`axes`, checked by
every stage before it loads anything) and the runs whose scores the study gathers (`runs`). dvc.yaml's
templates build the same grid from the same params lists; tests/test_dag.py checks that they agree."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from dreamstudy.layout import BASELINE, Run, strategy_label
from dreamstudy.multi.variants import study_labels

# study -> grid item -> its valid values in params
AXES: dict[str, dict[str, Callable]] = {
    "main": {"subject": lambda p: p.data.subjects, "strategy": lambda p: p.aug.strategies,
             "method": lambda p: p.train.every_method},
    "ablation": {"subject": lambda p: p.ablation.subjects, "strategy": lambda p: [BASELINE, *p.ablation.strategies],
                 "method": lambda p: [p.ablation.method], "strength": lambda p: p.ablation.strengths},
    "multi": {"pair": lambda p: [pair.key for pair in p.multi.pairs], "variant": lambda p: study_labels(p.multi)},
}


def runs(p, study: str) -> list[Run]:
    """The runs of `study`: main, every method x strategy x subject and every baseline method x subject on the
    original images; the ablation, its baseline (`none`) once
    per subject and every strategy at every strength; multi, every variant (and regional one) x pair."""
    if study == "multi":
        return [(label, BASELINE, pair.key) for label in study_labels(p.multi) for pair in p.multi.pairs]
    if study == "ablation":
        a = p.ablation
        labels = [BASELINE, *(strategy_label(s, x) for s, x in itertools.product(a.strategies, a.strengths))]
        return list(itertools.product([a.method], labels, a.subjects))
    return [*itertools.product(p.train.methods, p.aug.strategies, p.data.subjects),
            *itertools.product(p.train.baseline_methods, [BASELINE], p.data.subjects)]
