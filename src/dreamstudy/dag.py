"""What each DVC stage reads, written per stage kind and grid item to build/stage_inputs/: the one dependency
through which DVC sees a stage's params and code.

DVC gives every stage of a `matrix` the same deps and params lists, while what a stage reads depends on its
item: `augment@dog-none` reads neither aug.strength nor any strategy's settings, a LoRA run without prior
preservation reads no priors key, a Custom Diffusion run executes tokens.py and a LoRA run does not. So the
`stage_inputs` stage writes, for each kind of stage and each item, a JSON file with the values of exactly the
params keys that stage reads (declared here; every stage gets a `ParamsView` that refuses any other key) and
the sha256 of exactly the files it executes (found by importing the stage as it runs); each stage depends on
its own file. A change reruns `stage_inputs` (seconds), then DVC reruns just the stages whose file changed.
A subject's own keys (PER_SUBJECT: its identifier) are in one more file per subject, so that renaming one
subject's identifier reruns that subject's stages alone.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from dreamstudy.io import file_sha256
from dreamstudy.layout import BASELINE, STUDIES
from dreamstudy.multi.variants import FUSION, FUSION_MODULE, SAMPLE_LABELS, parse_sample_label, variant_method
from dreamstudy.params import JOINT_METHOD, MERGED_FROM, METHODS, STRATEGIES, Params, ParamsError

PACKAGE = Path(__file__).resolve().parent
INPUTS = Path("build/stage_inputs")


@dataclass(frozen=True)
class Kind:
    """One kind of stage (one script in stages/)."""

    cell: tuple[str, ...]  # the grid items its command names (--subject ...)
    reads: Callable[[Params, str, str | None], list[str]]  # (params, study, item) -> keys its outputs depend on
    by: str | None = None  # the cell item whose value changes what it reads ("method", "strategy")
    imports_item: bool = True  # whether it imports that item's module (registry.method_module, strategy_module)
    # keys it reads that provably leave its outputs unchanged: not in its inputs file (a test keeps each claim)
    untracked: tuple[str, ...] = ()
    per_subject: bool = False  # reads its subject's (or pair's subjects') PER_SUBJECT keys, from their own files
    studies: tuple[str, ...] = ("main", "ablation")  # the studies with stages of this kind
    items: tuple[str, ...] | None = None  # the values its `by` item takes, if not all of ITEMS[by]
    item_modules: Callable[[str], tuple[str, ...]] = lambda item: ()  # modules it imports for an item, lazily


# Keys of one subject: a stage reads its own subject's from build/stage_inputs/{study}/subjects/{subject}.json,
# so that renaming one subject's identifier reruns that subject's stages only.
PER_SUBJECT = ("train.identifiers.{subject}",)


def _fetch_data(p: Params, study: str, item: None) -> list[str]:
    return ["data.source", "data.image_size", *(["data.local_path"] if p.data.source == "local" else [])]


def _class_priors(p: Params, study: str, item: None) -> list[str]:
    drawing = ["priors.num_inference_steps", "priors.guidance_scale", "priors.batch_size", "sample.scheduler",
               "model.pretrained", "model.resolution", "seed"]
    return ["priors.num_images", *(drawing if p.priors.num_images else [])]


def _prior_set(p: Params, study: str, method: str) -> list[str]:
    uses_priors = getattr(p.train, method).prior_preservation
    return [f"train.{method}.prior_preservation", *(["priors.weight"] if uses_priors else [])]


def _augment(p: Params, study: str, strategy: str) -> list[str]:
    from dreamstudy.augment.registry import strategy_reads  # the strategy's module declares what it reads

    graded = strategy != BASELINE and study == "main"  # the ablation's strength comes with its command
    return [*(["aug.strength"] if graded else []), *strategy_reads(strategy, p)]


def _train(p: Params, study: str, method: str) -> list[str]:
    return ["seed", "model.pretrained", "model.resolution", "train.mixed_precision",
            "train.gradient_checkpointing", "train.use_8bit_adam", f"train.{method}"]


def _sample(p: Params, study: str, method: str) -> list[str]:
    return ["seed", "model.pretrained", "model.resolution", f"train.{method}",
            "data.prompts_per_subject", "sample.images_per_prompt", "sample.num_inference_steps",
            "sample.guidance_scale", "sample.scheduler", "sample.batch_size", "sample.pres_images",
            # other kernels: the images change in the last bits, as with sample.batch_size
            "sample.compile", "sample.channels_last"]


def _train_multi(p: Params, study: str, variant: str) -> list[str]:
    return _train(p, study, JOINT_METHOD[variant])  # the method's own settings, both subjects at once


def _merge_multi(p: Params, study: str, variant: str) -> list[str]:
    # merges read the base model (LoRA: to load into; CD: its K/V and text features); Mix-of-Show's fusion also
    # samples (seeded, at the model's resolution) and solves as multi.fusion says
    fusion = ["multi.fusion", "seed", "model.resolution"] if variant == FUSION else []
    return ["model.pretrained", *fusion]


def _sample_multi(p: Params, study: str, label: str) -> list[str]:
    variant, regional = parse_sample_label(label)
    return ["seed", "model.pretrained", "model.resolution", f"train.{variant_method(variant)}",
            "multi.prompts_per_pair", "multi.images_per_prompt", "sample.num_inference_steps",
            "sample.guidance_scale", "sample.scheduler", "sample.batch_size", "sample.compile",
            "sample.channels_last",
            # with regions: the boxes; without: also each subject alone on the main study's prompts (retention)
            *(["multi.regions"] if regional else ["data.prompts_per_subject", "sample.images_per_prompt"])]


def _gather_multi(p: Params, study: str, item: None) -> list[str]:
    return ["seed", "eval.bootstrap_samples", "eval.confidence", "eval.alpha", "multi.pairs", "multi.joint",
            "multi.merges", "multi.regional"]


def _evaluate(p: Params, study: str, item: None) -> list[str]:
    # the encoders' batch changes scores in the last bit (batched kernels): a dependency
    return ["seed", "eval.pretrained_encoders", "eval.batch_size"]


def _evaluate_multi(p: Params, study: str, item: None) -> list[str]:
    return [*_evaluate(p, study, item), "multi.detection"]


def _gather(p: Params, study: str, item: None) -> list[str]:
    grid = ["data.subjects", "train.methods", "train.baseline_methods", "aug.strategies"] if study == "main" \
        else ["ablation"]
    return ["seed", "eval.memorization_threshold", "eval.bootstrap_samples", "eval.confidence", "eval.alpha", *grid]


def _report(p: Params, study: str, item: None) -> list[str]:
    if study != "main":
        return ["eval.memorization_threshold"]
    # the settings table: every method's training settings, the class priors' and the augmentation strength
    methods = [f"train.{method}" for method in [*p.train.methods, *p.train.baseline_methods]]
    return ["eval.memorization_threshold", *methods, "priors.num_images", "priors.weight", "aug.strength"]


KINDS = {
    "fetch_data": Kind((), _fetch_data),
    "class_priors": Kind(("subject",), _class_priors),
    "prior_set": Kind(("subject", "method"), _prior_set, by="method", imports_item=False),
    "augment": Kind(("subject", "strategy"), _augment, by="strategy", per_subject=True),
    "train": Kind(("subject", "method", "strategy"), _train, by="method", untracked=("train.checkpoint_every",),
                  per_subject=True),
    "sample": Kind(("subject", "method", "strategy"), _sample, by="method", per_subject=True),
    "evaluate": Kind(("subject", "method", "strategy"), _evaluate),
    "gather": Kind((), _gather),
    "report": Kind((), _report),
    # the multi-concept study: a pair's model, made by joint training or by merging single-concept models
    "train_multi": Kind(("pair", "variant"), _train_multi, by="variant", untracked=("train.checkpoint_every",),
                        per_subject=True, studies=("multi",), items=tuple(JOINT_METHOD)),
    "merge_multi": Kind(("pair", "variant"), _merge_multi, by="variant", imports_item=False, studies=("multi",),
                        items=tuple(MERGED_FROM),
                        item_modules=lambda variant: (FUSION_MODULE,) if variant == FUSION else ()),
    "sample_multi": Kind(("pair", "variant"), _sample_multi, by="variant", per_subject=True, studies=("multi",),
                         items=SAMPLE_LABELS),
    "evaluate_multi": Kind(("pair", "variant"), _evaluate_multi, studies=("multi",)),
    "gather_multi": Kind((), _gather_multi, studies=("multi",)),
    "report_multi": Kind((), lambda p, study, item: [], studies=("multi",)),  # results/multi/ and photos only
    "paper": Kind((), lambda p, study, item: [], studies=("main",)),  # compiles what the reports wrote
}
ITEMS = {"method": METHODS, "strategy": STRATEGIES, "variant": SAMPLE_LABELS, None: (None,)}


def kind_items(kind: str) -> tuple:
    spec = KINDS[kind]
    return spec.items if spec.items is not None else ITEMS[spec.by]


def inputs_file(study: str, kind: str, item: str | None = None) -> Path:
    """build/stage_inputs/{study}/{kind}[-{item}].json: what dvc.yaml names as a stage's dependency."""
    return INPUTS / study / (f"{kind}-{item}.json" if item else f"{kind}.json")


def subject_file(study: str, subject: str) -> Path:
    """build/stage_inputs/{study}/subjects/{subject}.json: the PER_SUBJECT keys of `subject`."""
    return INPUTS / study / "subjects" / f"{subject}.json"


def subject_keys(subject: str) -> list[str]:
    return [key.format(subject=subject) for key in PER_SUBJECT]


def lookup(p: Params, key: str):
    """The value of a dotted key ("train.lora.rank", "train.identifiers.dog") or section, as JSON-ready data."""
    node = p
    for part in key.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return to_jsonable_python(node)  # sections and lists of them (multi.pairs) as plain data


class ParamsView:
    """`Params` as one stage may read it: the keys of its inputs file and its untracked keys, nothing else.

    Reading any other key raises, so the inputs file (and with it DVC) cannot miss a setting the stage uses."""

    def __init__(self, node, allowed: frozenset[str], who: str, path: str = ""):
        self._node, self._allowed, self._who, self._path = node, allowed, who, path

    def __getattr__(self, name: str):
        computed = getattr(type(self._node), name, None)
        if isinstance(computed, property):  # e.g. multi.variants: from keys, each read through this view
            return computed.fget(self)
        key = f"{self._path}.{name}" if self._path else name
        value = getattr(self._node, name)
        if key in self._allowed or any(key.startswith(f"{a}.") for a in self._allowed):
            return value
        if isinstance(value, BaseModel):  # a section: refuse its keys one by one
            return ParamsView(value, self._allowed, self._who, key)
        if isinstance(value, dict):  # per-subject keys: the entries it may read
            return {k: v for k, v in value.items() if f"{key}.{k}" in self._allowed}
        raise ParamsError(f"{self._who} read `{key}`, which dreamstudy/dag.py does not list among its params: "
                          "DVC would not rerun it when that key changes; add it there")


def view(p: Params, study: str, kind: str, item: str | None, subjects: Sequence[str] = ()) -> ParamsView:
    spec = KINDS[kind]
    allowed = frozenset([*spec.reads(p, study, item if spec.by else None), *spec.untracked,
                         *(key for subject in subjects if spec.per_subject for key in subject_keys(subject))])
    return ParamsView(p, allowed, f"stages/{kind}.py ({study}{f', {item}' if item else ''})")


def _load_item(by: str | None, item: str | None) -> None:
    """Import what a stage imports for its item at run time: the method's (a variant's method's) or strategy's
    module."""
    if by in ("method", "variant"):
        from dreamstudy.methods.registry import method_module
        method_module(item if by == "method" else variant_method(parse_sample_label(item)[0]))
    elif by == "strategy":
        from dreamstudy.augment.registry import strategy_module
        strategy_module(item)


def _package_of(path: Path) -> Path:
    """The package folder a data file belongs to (augment/ for augment/prompts/scenes.txt)."""
    folder = path.parent
    while not (folder / "__init__.py").is_file():
        folder = folder.parent
    return folder


def _package_data() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc"))


def executed_files(kind: str, item: str | None) -> list[Path]:
    """The files a `kind` stage for `item` executes or reads as code: its script (stages/, from the repository,
    the working folder of every stage), every dreamstudy module it imports, and the package data that those of
    the data's package name (augment/background.py names augment/prompts/scenes.txt).

    Imported in a forked child, with none of our modules loaded, so that each stage's imports are its own."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: import as the stage does, report, exit without cleanup
        try:
            os.close(read)
            for name in [name for name in sys.modules if name.split(".")[0] == "dreamstudy"]:
                del sys.modules[name]  # this process's own (dag, params, ...): the stage imports what it needs
            runpy.run_path(f"stages/{kind}.py", run_name="stage_inputs")
            if KINDS[kind].imports_item:
                _load_item(KINDS[kind].by, item)
            for module in KINDS[kind].item_modules(item):
                importlib.import_module(module)
            files = sorted({str(Path(m.__file__).resolve()) for name, m in list(sys.modules.items())
                            if name.split(".")[0] == "dreamstudy" and getattr(m, "__file__", None)})
            os.write(write, json.dumps(files).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        output = pipe.read()
    os.waitpid(pid, 0)
    if not output:
        raise RuntimeError(f"could not import stages/{kind}.py for {item!r}")
    modules = [Path(f) for f in json.loads(output)]
    data = [d for d in _package_data() if any(m.parent == _package_of(d) and d.name in m.read_text() for m in modules)]
    return sorted([Path(f"stages/{kind}.py").resolve(), *modules, *data])


def _preload() -> None:
    """Import the heavy libraries once, before the children fork, so each child imports only our modules."""
    for name in ("torch", "torchvision", "diffusers", "transformers", "peft", "accelerate", "pandas", "scipy.stats",
                 "matplotlib.pyplot", "seaborn", "open_clip", "timm", "lpips", "cv2", "dvclive"):
        importlib.import_module(name)
    import diffusers
    import transformers
    diffusers.StableDiffusionPipeline, diffusers.UNet2DConditionModel, transformers.CLIPTextModel  # noqa: B018


def _name(path: Path) -> str:
    """A file's name in the inputs files: src/dreamstudy/... for the package, wherever it is installed (a
    queued `dvc exp run` works in a copy of the repository but imports the editable install), else its path
    from the repository (stages/...)."""
    if path.is_relative_to(PACKAGE):
        return str(Path("src", "dreamstudy", path.relative_to(PACKAGE)))
    return str(path.relative_to(Path.cwd().resolve()))


def stage_inputs(p: Params) -> dict[Path, dict]:
    """Every stage kind's inputs file for every study and item: {"params": {key: value}, "code": {file: sha256}}."""
    _preload()
    code = {}
    for kind in KINDS:
        for item in kind_items(kind):
            code[kind, item] = {_name(f): file_sha256(f) for f in executed_files(kind, item)}
    files = {inputs_file(study, kind, item): {"params": {key: lookup(p, key) for key in spec.reads(p, study, item)},
                                              "code": code[kind, item]}
             for kind, spec in KINDS.items() for study in spec.studies for item in kind_items(kind)}
    return files | {subject_file(study, subject): {"params": {key: lookup(p, key) for key in subject_keys(subject)}}
                    for study in STUDIES for subject in p.train.identifiers}
