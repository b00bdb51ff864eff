"""The multi-concept study's own composition prompts: 12 per pair kind, three per category, each naming both
subjects once; every pair has a kind (the params schema asks it of every pair)."""

import pytest

from dreamstudy.data.dreambench import SUBJECTS
from dreamstudy.multi.prompts import CATEGORIES, PROMPTS, pair_kind, pair_prompts


@pytest.mark.parametrize("kind", sorted(PROMPTS))
def test_each_kind_has_twelve_prompts_naming_both_subjects_once(kind):
    templates = PROMPTS[kind]
    assert len(templates) == 12 and len(set(templates)) == 12
    assert all(t.count("{0}") == 1 and t.count("{1}") == 1 for t in templates)


def test_categories_and_subject_phrases():
    prompts = pair_prompts("dog", "bear_plushie")
    assert [p.category for p in prompts] == [c for c in CATEGORIES for _ in range(3)]
    assert prompts[0].text("mth dog", "pkk stuffed animal") == "a mth dog playing with a pkk stuffed animal on a beach"
    assert prompts[0].text("dog", "stuffed animal") == "a dog playing with a stuffed animal on a beach"
    assert len(pair_prompts("dog", "cat", 5)) == 5


def test_pair_kinds():
    assert pair_kind("dog", "dog2") == "live+live"
    assert pair_kind("dog3", "pink_sunglasses") == "live+wearable"
    assert pair_kind("dog2", "robot_toy") == "live+object"
    assert pair_kind("teapot", "vase") == "object+object"
    with pytest.raises(ValueError, match="list the live subject first"):
        pair_kind("backpack", "dog")
    assert all(pair_kind("dog", s) for s in SUBJECTS)
