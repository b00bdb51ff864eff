"""The one schema of params.yaml, read and validated by every stage before any model loads.

Each section is a pydantic model: types, ranges and enums live here, with a line of documentation
per key. `load_params` turns any violation into a `ParamsError` naming the key and the valid values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from dreamstudy.data.dreambench import SUBJECTS
from dreamstudy.errors import StudyError
from dreamstudy.layout import BASELINE, pair_key
from dreamstudy.models.tokenizer import check_identifier
from dreamstudy.multi.boxes import check_box
from dreamstudy.multi.prompts import pair_kind

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(ge=1)]

METHODS = ("dreambooth", "lora", "textual_inversion", "custom_diffusion", "edlora", "orthogonal")
STRATEGIES = ("none", "classic", "scale", "background", "img2img", "controlnet", "specialist", "mix")
SCHEDULERS = ("ddim", "pndm", "dpm", "euler")
SOURCES = ("github", "local", "embedded")
BACKGROUNDS = ("solid", "noise", "stripes", "checker", "scene")  # augment/background.py's kinds
# The multi-concept study's models of a pair, each named "<method>_<how>": a method trained on both subjects at
# once with its main-study settings ("lora_joint"), or the main study's two single-concept models of a method
# merged ("lora_sum"; Mix-of-Show's gradient fusion of two ED-LoRAs is "edlora_fusion").
MERGES = {"lora": ("sum", "average"), "custom_diffusion": ("merge",), "textual_inversion": ("compose",),
          "edlora": ("fusion",), "orthogonal": ("sum",)}
JOINT_METHOD = {f"{method}_joint": method for method in METHODS}  # variant -> the method it trains
MERGED_FROM = {f"{method}_{how}": method for method, hows in MERGES.items() for how in hows}  # -> whose models
VARIANT_METHOD = {**JOINT_METHOD, **MERGED_FROM}  # every variant -> its method
MULTI_VARIANTS = tuple(VARIANT_METHOD)
FUSION_SOLVERS = ("closed_form", "lbfgs")
DREAMBENCH_COMMIT = "4f887af7970a06fc0cd3adaa1d0b368547d6a1d0"


class ParamsError(StudyError, ValueError):
    """params.yaml (or a -S override) does not fit the schema."""


def _known_subjects(subjects: list[str]) -> list[str]:
    unknown = [s for s in subjects if s not in SUBJECTS]
    if unknown:
        raise ValueError(f"unknown subject(s) {unknown}; valid: {sorted(SUBJECTS)}")
    return _distinct(subjects)


def _distinct(values: list) -> list:
    if not values or len(set(values)) != len(values):
        raise ValueError("must be a non-empty list without repeats")
    return values


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


class DataParams(Section):
    source: Literal[SOURCES] = Field("github", description="where DreamBench comes from")
    local_path: str | None = Field(None, description="folder with the dataset's layout (source: local)")
    subjects: list[str] = Field(description="DreamBench subjects of the study (DAG shape)")
    image_size: PositiveInt = Field(512, description="side of the normalised square images, px")
    prompts_per_subject: Annotated[int, Field(ge=1, le=25)] = Field(
        25, description="first N of each subject's 25 DreamBench prompts")

    @field_validator("subjects")
    @classmethod
    def _known_subjects(cls, subjects: list[str]) -> list[str]:
        return _known_subjects(subjects)

    @model_validator(mode="after")
    def _local_needs_path(self) -> "DataParams":
        if self.source == "local" and not self.local_path:
            raise ValueError("data.local_path is required when data.source is 'local'")
        return self


class ModelParams(Section):
    pretrained: str = Field(description="hub id, local diffusers folder, or 'tiny' (built-in random-init)")
    resolution: PositiveInt = Field(512, description="training and sampling resolution, px")

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8")
        return value


class GenerationParams(Section):
    """A generative strategy's denoising, with the base model's own scheduler (PNDM for SD 1.x)."""

    num_inference_steps: PositiveInt = Field(
        20, description="denoising steps of a full schedule (img2img runs the last strength x of them)")
    guidance_scale: Annotated[float, Field(ge=0)] = Field(7.5, description="classifier-free guidance scale")


class ControlNetParams(GenerationParams):
    model: str = Field("lllyasviel/sd-controlnet-canny",
                       description="hub id or diffusers folder of a Canny ControlNet for model.pretrained "
                                   "(with model.pretrained: tiny, the built-in tiny one, whatever this says)")
    conditioning_scale: Annotated[float, Field(ge=0)] = Field(1.0, description="weight of the ControlNet's residuals")
    canny_low: Annotated[int, Field(ge=0)] = Field(
        100, description="Canny's lower hysteresis threshold, on the gradient of 8-bit grey levels")
    canny_high: Annotated[int, Field(ge=0)] = Field(
        200, description="Canny's upper hysteresis threshold: edges start above it, continue above canny_low")

    @model_validator(mode="after")
    def _thresholds_in_order(self) -> ControlNetParams:
        if self.canny_low >= self.canny_high:
            raise ValueError(f"canny_low ({self.canny_low}) must be below canny_high ({self.canny_high})")
        return self


class BackgroundParams(GenerationParams):
    num_inference_steps: PositiveInt = Field(30, description="denoising steps of a generated scene")
    kinds: list[Literal[BACKGROUNDS]] = Field(
        default_factory=lambda: list(BACKGROUNDS), description="new backgrounds, drawn uniformly from these")

    @field_validator("kinds")
    @classmethod
    def _distinct(cls, kinds: list[str]) -> list[str]:
        return _distinct(kinds)


class AugParams(Section):
    strategies: list[Literal[STRATEGIES]] = Field(description="augmentation strategies of the study (DAG shape)")
    strength: Annotated[float, Field(ge=0, le=1)] = Field(description="0 = originals, 1 = strongest")
    num_per_image: Annotated[int, Field(ge=0)] = Field(4, description="augmented images per original")
    mix: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: {"classic": 1.0}, description="strategy -> weight, for the `mix` strategy")
    img2img: GenerationParams = Field(default_factory=GenerationParams, description="`img2img`'s denoising")
    controlnet: ControlNetParams = Field(
        default_factory=ControlNetParams, description="`controlnet`'s ControlNet, edge maps and denoising")
    background: BackgroundParams = Field(
        default_factory=BackgroundParams, description="`background`'s new backgrounds and generated scenes")

    @field_validator("mix")
    @classmethod
    def _mix_of_known_strategies(cls, mix: dict[str, float]) -> dict[str, float]:
        unknown = [name for name in mix if name not in STRATEGIES or name == "mix"]
        if unknown or not mix:
            raise ValueError(f"needs weights of known strategies other than mix; unknown: {unknown}; "
                             f"valid: {[s for s in STRATEGIES if s != 'mix']}")
        return mix


class MethodParams(Section):
    lr: PositiveFloat = Field(description="AdamW learning rate")
    steps: PositiveInt = Field(description="optimizer steps")
    batch_size: PositiveInt = Field(1, description="instance images per step (as many class images join)")
    prior_preservation: bool = Field(False, description="add the class-prior loss (needs priors.num_images > 0)")
    # Per method, as diffusers' scripts have them (all default to these, but textual_inversion.py clips nothing)
    weight_decay: Annotated[float, Field(ge=0)] = Field(1e-2, description="AdamW's (decoupled) weight decay")
    max_grad_norm: PositiveFloat | None = Field(
        1.0, description="clip the gradients' total norm to this before each step; null = no clipping")


class DreamBoothParams(MethodParams):
    train_text_encoder: bool = Field(False, description="fine-tune the text encoder too")


class LoraParams(MethodParams):
    rank: PositiveInt = Field(4, description="LoRA rank r")
    alpha: PositiveFloat = Field(4.0, description="LoRA alpha (scale = alpha / rank)")
    train_text_encoder: bool = Field(False, description="LoRA on the text encoder's attention too")


class TextualInversionParams(MethodParams):
    pass


class CustomDiffusionParams(MethodParams):
    pass


class EdloraParams(MethodParams):
    """ED-LoRA (Mix-of-Show): `lr` is the UNet LoRA's; MoS's defaults: 1e-4, 1e-5, 1e-3, rank 4."""

    rank: PositiveInt = Field(4, description="LoRA rank r of the UNet's and text encoder's attention (alpha = r)")
    text_encoder_lr: PositiveFloat = Field(1e-5, description="the text encoder LoRA's learning rate")
    embedding_lr: PositiveFloat = Field(1e-3, description="the layer-wise embeddings' learning rate")


class OrthogonalParams(MethodParams):
    """Orthogonal Adaptation (methods/orthogonal.py): LoRA whose A is frozen to the subject's rows of a shared
    orthogonal basis; only B trains."""

    rank: PositiveInt = Field(4, description="rows per subject: 30 x rank must fit every attention input (SD 1.5: "
                                             "<= 10; the tiny model: 1)")
    alpha: PositiveFloat = Field(4.0, description="LoRA alpha (scale = alpha / rank)")
    basis_seed: Annotated[int, Field(ge=0)] = Field(
        0, description="draws each layer's orthogonal basis; models of different basis seeds are not orthogonal")


class CheckpointParams(Section):
    """Steps between resumable checkpoints, per method. Only the latest is kept, and it holds the trained
    weights and both AdamW moments in float32: at SD 1.5's size 10.3 GB for DreamBooth, 3 MB for LoRA."""

    dreambooth: PositiveInt = Field(400, description="DreamBooth's checkpoints are the UNet thrice over: few")
    lora: PositiveInt = Field(100)
    textual_inversion: PositiveInt = Field(500)
    custom_diffusion: PositiveInt = Field(100)
    edlora: PositiveInt = Field(100)
    orthogonal: PositiveInt = Field(100)


class TrainParams(Section):
    methods: list[Literal[METHODS]] = Field(description="personalization methods of the study, each trained on "
                                                        "every strategy of aug.strategies (DAG shape)")
    baseline_methods: list[Literal[METHODS]] = Field(
        description="more methods, trained on the original images only (strategy none; no augmentation grid): "
                    "e.g. edlora, whose models Mix-of-Show fuses (DAG shape; [] = none)")
    identifiers: dict[str, str] = Field(
        description="subject -> the rare word that names it in captions and prompts: one token of SD's tokenizer "
                    "from its rarest fifth, a different one per subject, so that two subjects' models compose")
    checkpoint_every: CheckpointParams = Field(
        default_factory=CheckpointParams, description="steps between resumable checkpoints, per method")
    # "fp32", not accelerate's "no": YAML reads an unquoted no as false, and `dvc exp run -S` unquotes
    mixed_precision: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="autocast dtype on GPU")
    gradient_checkpointing: bool = Field(False, description="recompute activations to save GPU memory")
    use_8bit_adam: bool = Field(False, description="bitsandbytes' AdamW8bit (needs bitsandbytes; GPU or CPU)")
    dreambooth: DreamBoothParams
    lora: LoraParams
    textual_inversion: TextualInversionParams
    custom_diffusion: CustomDiffusionParams
    edlora: EdloraParams
    orthogonal: OrthogonalParams

    @field_validator("baseline_methods")
    @classmethod
    def _not_on_the_grid_too(cls, baseline: list[str], info: ValidationInfo) -> list[str]:
        twice = sorted(set(baseline) & set(info.data.get("methods", [])))
        if twice or len(set(baseline)) != len(baseline):
            raise ValueError(f"lists {twice or 'a method'} twice, or also in train.methods: a method runs on every "
                             "strategy (methods) or on the original images only (baseline_methods)")
        return baseline

    @property
    def every_method(self) -> list[str]:
        """The main study's methods: those of the augmentation grid, then those on the original images only."""
        return [*self.methods, *self.baseline_methods]

    @field_validator("identifiers")
    @classmethod
    def _rare_distinct_tokens(cls, identifiers: dict[str, str]) -> dict[str, str]:
        _known_subjects(list(identifiers))
        for subject, word in identifiers.items():
            try:
                check_identifier(word)
            except ValueError as err:
                raise ValueError(f"{subject}: {err}") from None
        shared = sorted({w for w in identifiers.values() if list(identifiers.values()).count(w) > 1})
        if shared:
            raise ValueError(f"{shared} name(s) several subjects: each subject needs its own identifier")
        return identifiers


class PriorsParams(Section):
    num_images: Annotated[int, Field(ge=0)] = Field(200, description="class images per DreamBench class")
    weight: PositiveFloat = Field(1.0, description="weight of the prior-preservation loss")
    num_inference_steps: PositiveInt = Field(50, description="denoising steps of the class images")
    guidance_scale: Annotated[float, Field(ge=0)] = Field(7.5, description="guidance of the class images")
    batch_size: PositiveInt = Field(4, description="images per pipeline call")


class SampleParams(Section):
    images_per_prompt: PositiveInt = Field(4, description="images per prompt (DreamBench: 4)")
    num_inference_steps: PositiveInt = Field(50, description="denoising steps")
    guidance_scale: Annotated[float, Field(ge=0)] = Field(7.5, description="classifier-free guidance scale")
    scheduler: Literal[SCHEDULERS] = Field("ddim", description="diffusers scheduler")
    batch_size: PositiveInt = Field(4, description="images per pipeline call")
    pres_images: Annotated[int, Field(ge=0)] = Field(
        4, description="'a photo of a {class}' images per fine-tuned model, for PRES (<= priors.num_images)")
    compile: bool = Field(False, description="torch.compile the UNet (GPU; first batch pays the compilation)")
    channels_last: bool = Field(False, description="UNet and VAE in channels-last memory format")


class AblationParams(Section):
    method: Literal[METHODS] = Field(description="the method whose training data the ablation varies")
    subjects: list[str] = Field(description="DreamBench subjects of the ablation")
    strategies: list[Literal[STRATEGIES]] = Field(
        description="strategies compared at each strength; `none` (the original images) is always run, once "
                    "per subject, as the baseline they are tested against")
    strengths: list[Annotated[float, Field(ge=0, le=1)]] = Field(description="aug.strength values compared")

    @field_validator("subjects")
    @classmethod
    def _known_subjects(cls, subjects: list[str]) -> list[str]:
        return _known_subjects(subjects)

    @field_validator("strategies")
    @classmethod
    def _baseline_runs_once(cls, strategies: list[str]) -> list[str]:
        if BASELINE in strategies:
            raise ValueError(f"{BASELINE!r} is the ablation's baseline, run once per subject whatever the "
                             "strengths: leave it out of this list")
        return strategies

    @field_validator("strategies", "strengths")
    @classmethod
    def _distinct(cls, values: list) -> list:
        return _distinct(values)


class FusionParams(Section):
    """Mix-of-Show's gradient fusion: min_W sum_i ||W X_i - W_i X_i||^2 per layer (multi/fusion.py)."""

    solver: Literal[FUSION_SOLVERS] = Field(
        "closed_form", description="closed_form (exact, from streamed Gram matrices) or lbfgs (Mix-of-Show's)")
    lbfgs_text_iters: PositiveInt = Field(500, description="lbfgs: iterations for text encoder and K/V layers")
    lbfgs_unet_iters: PositiveInt = Field(50, description="lbfgs: iterations for the other UNet layers")


OWL_IMAGE_SIZE, OWL_PATCH = 960, 16  # OWLv2 base/16's input side and patch side (metrics/detector.py)


class DetectionParams(Section):
    """OWLv2 finding each subject of a pair in its images (metrics/detector.py): fidelity on crops, identity
    mixing."""

    image_size: Annotated[int, Field(ge=OWL_PATCH, multiple_of=OWL_PATCH)] = Field(
        OWL_IMAGE_SIZE, description="the detector's input side; below the checkpoint's 960 px, on interpolated "
                                    "position embeddings (faster; smoke runs)")
    threshold: Annotated[float, Field(ge=0, lt=1)] = Field(0.1, description="least box score that finds a subject")
    max_iou: Annotated[float, Field(ge=0, le=1)] = Field(
        0.5, description="most overlap (IoU) of the two subjects' boxes: one object is not both subjects")


class MergeParams(Section):
    """Which merges of each method's two single-concept models (multi/merge.py), as '<method>_<how>'. Every key
    is required, [] for none: dvc.yaml's templates read each."""

    lora: list[Literal[MERGES["lora"]]] = Field(
        description="sum: both adapters at weight 1; average: at 1/2 (exact, peft's cat)")
    custom_diffusion: list[Literal[MERGES["custom_diffusion"]]] = Field(
        description="merge: Custom Diffusion's constrained closed-form K/V merge")
    textual_inversion: list[Literal[MERGES["textual_inversion"]]] = Field(
        description="compose: both learned tokens side by side")
    edlora: list[Literal[MERGES["edlora"]]] = Field(
        description="fusion: Mix-of-Show's gradient fusion of the ED-LoRAs (multi.fusion), layer-wise tokens")
    orthogonal: list[Literal[MERGES["orthogonal"]]] = Field(
        description="sum: Orthogonal Adaptation's plain sum of the two adapters (exact, peft's cat)")

    @property
    def variants(self) -> list[str]:
        return [f"{method}_{how}" for method in MERGES for how in getattr(self, method)]


class Pair(Section):
    """Two subjects composed in one image; a list of these rather than of "dog+cat" strings because DVC's
    templates can name each subject's folders only so. DVC names a pair's stages by its place in the list
    (train_multi@pair0-lora_joint): add pairs at the end."""

    first: str = Field(description="the live subject, when there is one")
    second: str = Field(description="the other subject")

    @property
    def subjects(self) -> list[str]:
        return [self.first, self.second]

    @property
    def key(self) -> str:
        """The pair's run key, its folder name: "dog+bear_plushie"."""
        return pair_key(self.subjects)


class MultiParams(Section):
    pairs: list[Pair] = Field(description="pairs of DreamBench subjects composed in one image, each of "
                                          "data.subjects, the live one first (DAG shape; [] = none)")
    joint: list[Literal[METHODS]] = Field(
        description="methods trained on both subjects at once, as '<method>_joint' (DAG shape): the method's "
                    "settings, both subjects' original images and class images")
    merges: MergeParams = Field(description="merges of the main study's single-concept models (DAG shape)")
    regional: list[Literal[MULTI_VARIANTS]] = Field(
        description="variants also sampled with regions (Mix-of-Show's regionally controllable "
                                          "sampling): the pair's first subject in regions[0], second in [1]")
    regions: list[list[float]] = Field(
        default_factory=lambda: [[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]],
        description="two boxes (x0, y0, x1, y1), fractions of the image; default: left and right halves")
    prompts_per_pair: Annotated[int, Field(ge=1, le=12)] = Field(12, description="first N composition prompts")
    images_per_prompt: PositiveInt = Field(8, description="images per prompt, seeds shared by every variant")
    fusion: FusionParams = Field(default_factory=FusionParams, description="Mix-of-Show's gradient fusion "
                                                                            "(merges.edlora: [fusion])")
    detection: DetectionParams = Field(default_factory=DetectionParams, description="each subject's box "
                                                                                   "(evaluate_multi)")

    @field_validator("pairs")
    @classmethod
    def _pairs_of_two_subjects(cls, pairs: list[Pair]) -> list[Pair]:
        for i, pair in enumerate(pairs):
            if pair.first == pair.second:
                raise ValueError(f"pairs[{i}] {pair.key!r}: a pair is two different subjects")
            try:
                _known_subjects(pair.subjects)
                pair_kind(*pair.subjects)  # picks the pair's prompts
            except ValueError as err:
                raise ValueError(f"pairs[{i}] {pair.key!r}: {err}") from None
        if len({frozenset(pair.subjects) for pair in pairs}) != len(pairs):
            raise ValueError("a pair is listed twice")
        return pairs

    @field_validator("joint", "regional")
    @classmethod
    def _distinct(cls, values: list) -> list:
        return _distinct(values) if values else values

    @property
    def variants(self) -> list[str]:
        return [*(f"{method}_joint" for method in self.joint), *self.merges.variants]

    @field_validator("regions")
    @classmethod
    def _two_boxes(cls, regions: list[list[float]]) -> list[list[float]]:
        if len(regions) != 2:
            raise ValueError(f"needs two boxes, one per subject of a pair, got {len(regions)}")
        for i, box in enumerate(regions):
            try:
                check_box(box)
            except ValueError as err:
                raise ValueError(f"regions[{i}] {err}") from None
        return regions

    @model_validator(mode="after")
    def _regional_variants_are_variants(self) -> MultiParams:
        stray = [v for v in self.regional if v not in self.variants]
        if stray:
            raise ValueError(f"regional {stray}: not in joint or merges {self.variants}")
        return self


class EvalParams(Section):
    pretrained_encoders: bool = Field(True, description="real CLIP/DINO weights; false = random init, labelled")
    batch_size: PositiveInt = Field(32, description="images per encoder call")
    memorization_threshold: Annotated[float, Field(gt=0, le=1)] = Field(
        0.9, description="DINO similarity to a training image above which a sample counts as a copy")
    bootstrap_samples: PositiveInt = Field(2000, description="hierarchical bootstrap replicates per interval")
    confidence: Annotated[float, Field(gt=0, lt=1)] = Field(0.95, description="coverage of the bootstrap intervals")
    alpha: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.05, description="tests against `none`: significant where p < alpha (uncorrected)")


class Params(Section):
    seed: Annotated[int, Field(ge=0)] = Field(description="root of every random choice")
    data: DataParams
    model: ModelParams
    aug: AugParams
    train: TrainParams
    priors: PriorsParams
    sample: SampleParams
    eval: EvalParams
    ablation: AblationParams
    multi: MultiParams

    @model_validator(mode="after")
    def _identifiers_exist(self) -> "Params":
        pairs = [subject for pair in self.multi.pairs for subject in pair.subjects]
        missing = sorted({*self.data.subjects, *self.ablation.subjects, *pairs} - set(self.train.identifiers))
        if missing:
            raise ValueError(f"train.identifiers has no identifier for {missing}")
        return self

    @model_validator(mode="after")
    def _multi_builds_on_the_main_study(self) -> "Params":
        methods = {v: VARIANT_METHOD[v] for v in self.multi.variants}
        absent = [f"train.methods (or baseline_methods) lacks {m!r} (for multi variant {v!r})"
                  for v, m in methods.items() if m not in self.train.every_method]
        if BASELINE not in self.aug.strategies:
            absent.append(f"aug.strategies lacks {BASELINE!r}")
        subjects = sorted({s for pair in self.multi.pairs for s in pair.subjects} - set(self.data.subjects))
        if subjects:
            absent.append(f"data.subjects lacks {subjects}")
        if absent:
            raise ValueError("the multi-concept study trains on the main study's training sets of the original "
                             f"images and merges its models: {'; '.join(absent)} (or set multi.pairs: [], "
                             "no multi-concept stage)")
        return self

    @model_validator(mode="after")
    def _priors_exist(self) -> "Params":
        for method in {*self.train.every_method, self.ablation.method}:
            if getattr(self.train, method).prior_preservation and self.priors.num_images == 0:
                raise ValueError(f"train.{method}.prior_preservation needs class images, "
                                 "but priors.num_images is 0")
        return self


def _describe(error: dict) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if error["type"] == "missing":
        return f"{key}: missing"
    return f"{key}: {error['msg']} (got {error.get('input')!r})"


def validate_params(raw: dict, source: str = "params.yaml") -> Params:
    # YAML reads 1e-4 as a string; accept numbers written that way, nothing looser.
    try:
        return Params.model_validate(_floats_from_strings(raw))
    except ValidationError as err:
        lines = "\n  ".join(_describe(e) for e in err.errors())
        raise ParamsError(f"{source} does not fit the schema:\n  {lines}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such file") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return validate_params(raw, str(path))


def _floats_from_strings(node):
    if isinstance(node, dict):
        return {k: _floats_from_strings(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_floats_from_strings(v) for v in node]
    if isinstance(node, str) and _looks_like_exponent(node):
        return float(node)
    return node


def _looks_like_exponent(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return "e" in text.lower() and not text.lower().startswith(("inf", "nan"))
