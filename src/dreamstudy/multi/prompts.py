"""The multi-concept study's composition prompts: 12 per kind of pair, written for this study (CustomConcept101's
are under a non-commercial licence, so they are neither copied nor adapted), in CustomConcept101's four
categories, three each: a new background, an inserted object, a style, a changed property.

`{0}` and `{1}` stand for the pair's first and second subject as "<identifier> <class>" ("mth dog"); with an
empty identifier the same prompt names the classes alone ("dog"), which is what CLIP-T scores against.
No torch here: the params schema imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from dreamstudy.data.dreambench import SUBJECTS, is_live
from dreamstudy.layout import pair_key
from dreamstudy.sampling.protocol import SampleSpec
from dreamstudy.seeding import derive_seed

CATEGORIES = ("background", "object", "style", "property")
WEARABLES = frozenset({"backpack", "boot", "glasses", "sneaker"})  # DreamBench classes one can wear

# kind -> 12 templates, three per category in CATEGORIES' order
PROMPTS: dict[str, tuple[str, ...]] = {
    "live+live": (
        "a {0} and a {1} sitting together on a beach",
        "a {0} and a {1} in a snowy forest",
        "a {0} and a {1} on a sofa in a living room",
        "a {0} and a {1} sharing a bowl of food",
        "a {0} and a {1} next to a red ball on the grass",
        "a {0} and a {1} under a colorful umbrella",
        "a watercolor painting of a {0} and a {1}",
        "a pencil sketch of a {0} and a {1}",
        "a {0} and a {1} in the style of a cartoon",
        "a {0} and a {1}, both wearing party hats",
        "a {0} and a {1} sleeping side by side",
        "a {0} and a {1} seen from above",
    ),
    "live+wearable": (
        "a {0} wearing a {1} on a beach",
        "a {0} wearing a {1} in a snowy forest",
        "a {0} wearing a {1} on a city street",
        "a {0} wearing a {1} next to a bicycle",
        "a {0} wearing a {1} beside a pile of autumn leaves",
        "a {0} wearing a {1} in front of a birthday cake",
        "a watercolor painting of a {0} wearing a {1}",
        "a pencil sketch of a {0} wearing a {1}",
        "a {0} wearing a {1} in the style of a cartoon",
        "a {0} wearing a {1}, seen from the side",
        "a {0} wearing a {1} while running",
        "a {0} lying down next to a {1}",
    ),
    "live+object": (
        "a {0} playing with a {1} on a beach",
        "a {0} and a {1} in a snowy forest",
        "a {0} and a {1} on a wooden table in a kitchen",
        "a {0} and a {1} next to a vase of flowers",
        "a {0} and a {1} beside a stack of books",
        "a {0} and a {1} in front of a tent",
        "a watercolor painting of a {0} and a {1}",
        "a pencil sketch of a {0} and a {1}",
        "a {0} and a {1} in the style of a cartoon",
        "a {0} sleeping next to a {1}",
        "a {0} holding a {1} in its mouth",
        "a {0} and a {1} seen from above",
    ),
    "object+object": (
        "a {0} and a {1} on a beach",
        "a {0} and a {1} in a snowy forest",
        "a {0} and a {1} on a wooden table in a kitchen",
        "a {0} and a {1} next to a vase of flowers",
        "a {0} and a {1} beside a stack of books",
        "a {0} and a {1} in front of a window",
        "a watercolor painting of a {0} and a {1}",
        "a pencil sketch of a {0} and a {1}",
        "a {0} and a {1} in the style of a cartoon",
        "a {0} on top of a {1}",
        "a {0} and a {1}, both covered in snow",
        "a {0} and a {1} seen from above",
    ),
}
PROMPTS_PER_KIND = 12


def pair_kind(first: str, second: str) -> str:
    """The kind of a pair of DreamBench subjects, which picks its prompts."""
    if is_live(first) and is_live(second):
        return "live+live"
    if is_live(first):
        return "live+wearable" if SUBJECTS[second] in WEARABLES else "live+object"
    if is_live(second):
        raise ValueError(f"pair ({first}, {second}): list the live subject first")
    return "object+object"


@dataclass(frozen=True)
class PairPrompt:
    index: int
    template: str
    category: str

    def text(self, first: str, second: str) -> str:
        """The prompt with each subject's phrase ("mth dog", or "dog" alone)."""
        return " ".join(self.template.format(first, second).split())


def pair_prompts(first: str, second: str, count: int = PROMPTS_PER_KIND) -> list[PairPrompt]:
    """The first `count` prompts of the pair's kind."""
    templates = PROMPTS[pair_kind(first, second)]
    return [PairPrompt(i, templates[i], CATEGORIES[i // 3]) for i in range(count)]


def pair_specs(subjects, *, tokens: list[str], num_prompts: int, images_per_prompt: int,
               seed: int) -> list[SampleSpec]:
    """The first `num_prompts` prompts of a pair (data.dataset.Subject each; `tokens`: the words that name them
    in the variant's model), each N times. Seeds depend on the pair, prompt and image only: every variant is
    sampled from the same noise."""
    key = pair_key(s.name for s in subjects)
    phrases = [f"{token} {subject.class_name}" for token, subject in zip(tokens, subjects, strict=True)]
    return [SampleSpec(subject=key, prompt_index=p.index, prompt_kind=p.category, prompt=p.text(*phrases),
                       image_index=k, seed=derive_seed(seed, "multi", key, p.index, k), file=f"p{p.index:02d}_{k}.png")
            for p in pair_prompts(*(s.name for s in subjects), num_prompts) for k in range(images_per_prompt)]
