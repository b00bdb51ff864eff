"""The multi-concept study's variants (params.MULTI_VARIANTS): the method whose tokens name a pair's subjects
in prompts and whose loader loads the variant's model, and the labels of their samples (a variant sampled
with regions, "lora_sum@regions"). Standard library only: the DAG's inputs and the stages read it."""

from __future__ import annotations

from dreamstudy.params import MULTI_VARIANTS, VARIANT_METHOD

REGIONS = "regions"
FUSION = "edlora_fusion"  # Mix-of-Show's gradient fusion, in a module of its own: no other merge depends on it
FUSION_MODULE = "dreamstudy.multi.mix_of_show"


def variant_method(variant: str) -> str:
    return VARIANT_METHOD[variant]


def sample_label(variant: str, regional: bool) -> str:
    """The folder name of a variant's samples: itself, or "<variant>@regions" sampled with regions."""
    return f"{variant}@{REGIONS}" if regional else variant


def parse_sample_label(label: str) -> tuple[str, bool]:
    variant, _, mode = label.partition("@")
    if variant not in MULTI_VARIANTS or mode not in ("", REGIONS):
        raise ValueError(f"{label!r} is no multi-concept variant (valid: {', '.join(MULTI_VARIANTS)}), nor one "
                         f"with @{REGIONS}")
    return variant, mode == REGIONS


def study_labels(multi) -> list[str]:
    """The sample labels of the multi-concept study `multi` (params' MultiParams): every variant, and the
    regional ones with regions."""
    return [*multi.variants, *(sample_label(variant, regional=True) for variant in multi.regional)]


SAMPLE_LABELS = tuple(sample_label(v, regional) for v in MULTI_VARIANTS for regional in (False, True))
