"""DreamBench facts: its 30 subjects, their classes, and which are live (google/dreambooth, dataset/).

Also its prompts: the parser of `prompts_and_classes.txt` and the Prompt it yields.
Standard library only: params.py imports this module.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Literal

from dreamstudy.errors import StudyError

# subject -> class noun, as in prompts_and_classes.txt; `fetch_data` checks the file against this table.
SUBJECTS: dict[str, str] = {
    "backpack": "backpack", "backpack_dog": "backpack", "bear_plushie": "stuffed animal",
    "berry_bowl": "bowl", "can": "can", "candle": "candle", "cat": "cat", "cat2": "cat",
    "clock": "clock", "colorful_sneaker": "sneaker", "dog": "dog", "dog2": "dog", "dog3": "dog",
    "dog5": "dog", "dog6": "dog", "dog7": "dog", "dog8": "dog", "duck_toy": "toy",
    "fancy_boot": "boot", "grey_sloth_plushie": "stuffed animal", "monster_toy": "toy",
    "pink_sunglasses": "glasses", "poop_emoji": "toy", "rc_car": "toy", "red_cartoon": "cartoon",
    "robot_toy": "toy", "shiny_sneaker": "sneaker", "teapot": "teapot", "vase": "vase",
    "wolf_plushie": "stuffed animal",
}
LIVE_CLASSES = frozenset({"dog", "cat"})

PromptKind = Literal["recontextualization", "accessorization", "property"]
PromptList = Literal["object", "live"]

# The DreamBench paper's grouping of each 25-prompt list, in file order.
PROMPT_KINDS: dict[str, tuple[tuple[PromptKind, int], ...]] = {
    "object": (("recontextualization", 20), ("property", 5)),
    "live": (("recontextualization", 10), ("accessorization", 10), ("property", 5)),
}

# Section headers of prompts_and_classes.txt, and the lines that only frame a section.
_SECTIONS = {"Classes": "classes", "Object Prompts": "object", "Live Subject Prompts": "live"}
_FRAMING = {"subject_name,class", "Prompts", "prompt_list = [", "]"}
# One prompt line: a Python string literal, then `.format(unique_token, class_token)` and maybe a comma.
_PROMPT_LINE = re.compile(
    r"""^(?P<literal>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\.format\(unique_token,\s*class_token\),?$""")


class DataError(StudyError, ValueError):
    """DreamBench input or output is missing, corrupt or not what this study expects."""


def is_live(subject: str) -> bool:
    return SUBJECTS[subject] in LIVE_CLASSES


@dataclass(frozen=True)
class Prompt:
    index: int
    template: str  # e.g. "a {0} {1} in the jungle": {0} = identifier, {1} = class noun
    kind: PromptKind

    def text(self, identifier: str, class_name: str) -> str:
        # Collapsing spaces lets an empty identifier give the plain class prompt (used for CLIP-T).
        return " ".join(self.template.format(identifier, class_name).split())


@dataclass(frozen=True)
class PromptsAndClasses:
    classes: dict[str, str]
    prompts: dict[PromptList, list[Prompt]]


def parse_prompts_and_classes(text: str, source: str = "prompts_and_classes.txt") -> PromptsAndClasses:
    """Parse DreamBench's subject->class table and its object and live prompt lists.

    The prompt lines are Python code; only their string literal is evaluated (ast.literal_eval).
    Any line that fits no part of the known layout is an error naming `source` and the line.
    """
    classes: dict[str, str] = {}
    templates: dict[str, list[str]] = {"object": [], "live": []}
    section = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line in _FRAMING:
            continue
        if line in _SECTIONS:
            section = _SECTIONS[line]
        elif section == "classes" and line.count(",") == 1:
            subject, class_name = (part.strip() for part in line.split(","))
            classes[subject] = class_name
        elif section in templates and (match := _PROMPT_LINE.match(line)):
            template = ast.literal_eval(match["literal"])
            if "{0}" not in template or "{1}" not in template:
                raise DataError(f"{source}:{number}: prompt lacks {{0}} or {{1}}: {line!r}")
            templates[section].append(template)
        else:
            raise DataError(f"{source}:{number}: unexpected line {line!r}")

    if classes != SUBJECTS:
        differing = sorted(s for s in classes.keys() | SUBJECTS.keys() if classes.get(s) != SUBJECTS.get(s))
        raise DataError(f"{source}: subject->class table differs from dreamstudy's SUBJECTS at {differing}")
    return PromptsAndClasses(classes, {name: _with_kinds(name, t, source) for name, t in templates.items()})


def _with_kinds(list_name: str, templates: list[str], source: str) -> list[Prompt]:
    kinds = [kind for kind, count in PROMPT_KINDS[list_name] for _ in range(count)]
    if len(templates) != len(kinds):
        raise DataError(f"{source}: {list_name} prompt list has {len(templates)} prompts, expected {len(kinds)}")
    return [Prompt(index, template, kind) for index, (template, kind) in enumerate(zip(templates, kinds))]
