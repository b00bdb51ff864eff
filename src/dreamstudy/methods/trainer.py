"""The one training loop of every method: the DreamBooth objective of diffusers' example scripts.

- Frozen parts are not recomputed per step: each training image's VAE latent distribution is encoded
  once, when a batch first needs it, and a latent drawn from it each step (exactly what encoding the image
  again would draw), and, unless the method trains the text encoder, each caption's embedding likewise.
- Mixed precision as diffusers' scripts: frozen weights are cast to the autocast dtype (fp16/bf16), the
  trained ones stay float32; a text encoder with any trained weight stays float32 whole.
- Prior preservation: class images join the batch, and their loss is added with `prior.weight`.
- Several concepts train jointly (Custom Diffusion's multi-concept fine-tuning, applied to every method): each
  step draws `batch_size` examples of each concept (and of each concept's class images), all through one
  UNet call; each concept's loss is its own prior-preservation loss, and the step's loss their mean.
- Resume: every random draw of step s comes from a generator seeded with (seed, s), so a checkpoint
  needs only the trainable weights, the optimizer and LR-scheduler states and the step to continue
  bit-identically on CPU.
- Non-finite values stop training (NonFiniteTrainingError): a NaN or infinite loss at the step it appears,
  non-finite trained weights before a checkpoint or the model is saved. Nothing non-finite is ever written.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers.optimization import get_scheduler
from PIL import Image
from torchvision.transforms import v2
from tqdm.auto import tqdm

from dreamstudy.errors import StudyError
from dreamstudy.methods import checkpoint
from dreamstudy.methods.registry import Method, Schedule
from dreamstudy.models.loading import loaded_from
from dreamstudy.seeding import derive_seed
from dreamstudy.text import replace_identifier
from dreamstudy.trainset import Example


@dataclass(frozen=True)
class Examples:
    """Training images with their captions (and loss masks), as augment.Example or plain tuples."""

    items: list[Example]

    def __post_init__(self):
        object.__setattr__(self, "items", [Example(*item) for item in self.items])

    def with_token(self, identifier: str, token: str) -> "Examples":
        return Examples([item._replace(caption=replace_identifier(item.caption, identifier, token))
                         for item in self.items])


@dataclass(frozen=True)
class Prior:
    """Prior preservation: class images ("a photo of a dog") and the weight of their loss."""

    examples: Examples
    weight: float


@dataclass(frozen=True)
class Concept:
    """One subject to learn: its examples, the word that names it in their captions (the method's token for
    it replaces that word), its class noun and, for prior preservation, its own class images."""

    examples: Examples
    identifier: str
    class_name: str
    prior: Prior | None = None


@dataclass(frozen=True)
class Optimization:
    """The optimizer step's weight decay and gradient clipping (defaults: diffusers' example scripts')."""

    weight_decay: float = 1e-2            # AdamW's, decoupled from the gradient
    max_grad_norm: float | None = 1.0     # the gradients' total norm is clipped to this; None = not clipped

    @classmethod
    def of(cls, section) -> Optimization:
        """From a method's params section (dreamstudy.params.MethodParams)."""
        return cls(section.weight_decay, section.max_grad_norm)


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BITSANDBYTES = "-r requirements-gpu.txt"  # bitsandbytes, pinned


@dataclass(frozen=True)
class Hardware:
    """Speed and memory switches; all off gives the plain float32 loop. Checked when made, which the
    train stage does before any model loads."""

    mixed_precision: str = "fp32"        # "fp32" | "fp16" | "bf16"
    gradient_checkpointing: bool = False  # in the UNet and, where it trains, the text encoder
    use_8bit_adam: bool = False          # bitsandbytes' AdamW8bit (GPU and CPU)

    def __post_init__(self):
        if self.mixed_precision == "fp16" and not torch.cuda.is_available():
            # accelerate would fail later, inside the loop, without naming the setting
            raise ValueError("train.mixed_precision: fp16 needs a CUDA GPU and none is available; "
                             "use bf16 (CPUs autocast to it) or fp32")
        if self.use_8bit_adam and find_spec("bitsandbytes") is None:
            raise ValueError(f"train.use_8bit_adam: true needs bitsandbytes, which is not installed: "
                             f"`pip install {BITSANDBYTES}`, or set it to false")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of autocast and of the frozen weights."""
        return DTYPES[self.mixed_precision]


@dataclass(frozen=True)
class Checkpointing:
    folder: Path
    every: int
    fingerprint: str  # what the run depends on: a checkpoint of another run is never resumed


def pixel_batch(paths: list[Path], resolution: int) -> torch.Tensor:
    """Images as a [-1, 1] batch at `resolution`: resize and centre crop, as diffusers' scripts do."""
    to_pixels = v2.Compose([
        v2.PILToTensor(), v2.Resize(resolution, antialias=True), v2.CenterCrop(resolution),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.5]),
    ])
    return torch.stack([to_pixels(Image.open(p).convert("RGB")) for p in paths])


def latent_masks(paths: list[Path | None], resolution: int, latent_size: int) -> torch.Tensor:
    """Loss masks at latent resolution, [N, 1, h, w] in [0, 1]: the share of each latent cell's pixels
    that count (all of them where an example has no mask)."""
    # nearest: a mask stays a mask; the area average below gives partial cells their share
    to_mask = v2.Compose([v2.PILToTensor(), v2.Resize(resolution, v2.InterpolationMode.NEAREST_EXACT),
                          v2.CenterCrop(resolution), v2.ToDtype(torch.float32, scale=True)])
    full = torch.ones(1, resolution, resolution)
    masks = torch.stack([to_mask(Image.open(p).convert("L")) if p else full for p in paths])
    return F.interpolate(masks, size=latent_size, mode="area")


@torch.no_grad()
def latent_distribution(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    return dist.mean.float(), dist.std.float()


class EncodedSet:
    """One example set, with everything frozen about an example computed once, when a batch first needs it.

    One example at a time, so an example's latents and text do not depend on which others share the call
    (batched kernels round differently): a resumed run sees the same values as an uninterrupted one."""

    def __init__(self, parts, method: Method, examples: Examples, resolution: int):
        self.paths, captions, masks = zip(*examples.items, strict=True)
        self.resolution = resolution
        self.latent_size = resolution // (2 ** (len(parts.vae.config.block_out_channels) - 1))
        self.mask = None
        if any(masks):
            self.mask = latent_masks(list(masks), resolution, self.latent_size).to(parts.vae.device)
        self.method = method
        self.ids = method.input_ids(parts.tokenizer, list(captions)).to(parts.vae.device)
        self.encode_text_once = not method.trains_text_encoder
        self.encoded: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def encode(self, parts, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Example i's latent mean and std, and its caption's embedding where the text encoder is frozen."""
        if i not in self.encoded:
            mean, std = latent_distribution(parts.vae, pixel_batch([self.paths[i]], self.resolution))
            text = None
            if self.encode_text_once:
                with torch.no_grad():
                    text = self.method.encode_text(parts.text_encoder, self.ids[i : i + 1])
            self.encoded[i] = mean[0], std[0], None if text is None else text[0]
        return self.encoded[i]

    def batch(self, parts, index: torch.Tensor, generator: torch.Generator):
        mean, std, text = zip(*(self.encode(parts, i) for i in index.tolist()), strict=True)
        mean, std = torch.stack(mean), torch.stack(std)
        eps = torch.randn(mean.shape, generator=generator).to(mean.device)
        latents = (mean + std * eps) * parts.vae.config.scaling_factor
        text = torch.stack(text) if self.encode_text_once else self.method.encode_text(parts.text_encoder,
                                                                                        self.ids[index])
        mask = self.mask[index] if self.mask is not None else torch.ones_like(latents[:, :1])
        return latents, text, mask


def batch_indices(n: int, batch_size: int, step: int, seed: int, name: str) -> torch.Tensor:
    """The examples of `step`: epochs of seeded permutations, so any step is found without replay."""
    per_epoch = math.ceil(n / batch_size)
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, name, epoch)))
    return order.split(batch_size)[position]


def diffusion_loss(parts, latents: torch.Tensor, text: torch.Tensor, noise: torch.Tensor,
                   timesteps: torch.Tensor, reduce: bool = True, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between the UNet's prediction and its target (epsilon or v) for noised `latents`.

    With `mask` ([B, 1, h, w] latent-cell weights) each example's loss is the weighted mean over the
    cells that count: masked-out cells (e.g. the empty canvas of a zoomed-out image) teach nothing."""
    scheduler = parts.noise_scheduler
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    prediction = parts.unet(noisy, timesteps, text).sample
    error = F.mse_loss(prediction.float(), target.float(), reduction="none")
    if mask is None:
        per_example = error.mean(dim=(1, 2, 3))
    else:
        weight = mask.expand_as(error)
        per_example = (error * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3)).clamp_min(1e-8)
    return per_example.mean() if reduce else per_example


def prior_preservation_loss(per_example: torch.Tensor, n_instance: int, weight: float) -> torch.Tensor:
    """DreamBooth's loss: instance MSE + weight x class MSE, the class examples following the instances."""
    instance, prior = per_example[:n_instance], per_example[n_instance:]
    loss = instance.mean()
    return loss + weight * prior.mean() if len(prior) else loss


def step_noise(latents: torch.Tensor, scheduler, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator).to(latents.device)
    return noise, timesteps


class ConceptBatch(NamedTuple):
    """One concept's examples of a step: latents, caption embeddings and loss masks of its instances, then of
    its class images."""

    latents: torch.Tensor
    text: torch.Tensor
    mask: torch.Tensor
    n_instances: int


class ConceptSet:
    """One concept's instance examples (captions in the method's token) and class images, encoded as needed."""

    def __init__(self, parts, method: Method, concept: Concept, token: str, number: int, resolution: int):
        self.instances = EncodedSet(parts, method, concept.examples.with_token(concept.identifier, token), resolution)
        prior = concept.prior
        self.classes = EncodedSet(parts, method, prior.examples, resolution) if prior else None
        self.prior_weight = prior.weight if prior else 0.0
        # Concept 0 draws under a single-concept run's names, so that a run of one concept draws (and learns)
        # exactly what it did before joint training existed; the others under names of their own.
        self.suffix = "" if number == 0 else f"/{number}"

    def batch(self, parts, batch_size: int, step: int, seed: int, generator: torch.Generator) -> ConceptBatch:
        """The examples of `step`: the instances, then the class images."""
        index = batch_indices(len(self.instances), batch_size, step, seed, "instances" + self.suffix)
        latents, text, mask = self.instances.batch(parts, index, generator)
        if self.classes is not None:
            class_index = batch_indices(len(self.classes), batch_size, step, seed, "classes" + self.suffix)
            latents, text, mask = (torch.cat(pair) for pair in
                                   zip((latents, text, mask), self.classes.batch(parts, class_index, generator)))
        return ConceptBatch(latents, text, mask, len(index))


def joint_loss(concept_sets: list[ConceptSet], batches: list[ConceptBatch], per_example: torch.Tensor) -> torch.Tensor:
    """The mean of the concepts' losses, each with its own prior term (`per_example`: the losses of the
    concepts' batches, one after the other).

    Every concept weighs the same whatever its number of images, as each step draws the same number of each.
    Custom Diffusion's train_custom_diffusion.py instead pools the concepts' instance images (each with its
    own caption) and their class images, and takes one instance mean + weight x one class mean over a batch
    that may hold any mix of concepts. For one concept this is its prior-preservation loss, bit for bit."""
    chunks = per_example.split([len(batch.latents) for batch in batches])
    return torch.stack([prior_preservation_loss(chunk, batch.n_instances, concept_set.prior_weight)
                        for concept_set, batch, chunk in zip(concept_sets, batches, chunks, strict=True)]).mean()


def concept_tokens(method: Method, tokenizer, concepts: Sequence[Concept]) -> list[str]:
    """Each concept's token; ValueError naming the identifier of one that cannot train (shared, or a token
    the method refuses: e.g. Textual Inversion's new token already in the vocabulary)."""
    if not concepts:
        raise ValueError("no concept to train")
    identifiers = [concept.identifier for concept in concepts]
    for i, identifier in enumerate(identifiers):
        if identifier in identifiers[:i]:
            raise ValueError(f"concepts {identifiers.index(identifier)} and {i} have the same identifier "
                             f"{identifier!r}: each concept trained jointly needs its own")
    tokens = [method.token(identifier) for identifier in identifiers]
    for identifier, token in zip(identifiers, tokens, strict=True):
        try:
            method.check(tokenizer, token)
        except ValueError as err:
            raise ValueError(f"concept with identifier {identifier!r}: {err}") from err
    return tokens


class NonFiniteTrainingError(StudyError, RuntimeError):
    """Training met a NaN or infinite loss or trained weight; it stopped there, and saved nothing of it."""


LIKELY_CAUSES = ("Likely causes: corrupted base weights (a damaged weights file of model.pretrained: rebuild or "
                 "re-download it), a learning rate too high (lower train.<method>.lr), or fp16 overflow (set "
                 "train.mixed_precision to bf16 or fp32).")


def finite_flags(tensors: Sequence[torch.Tensor]) -> list[bool]:
    """Whether each tensor is free of NaN and infinity: one pass over them, one device sync for all."""
    if not tensors:
        return []
    return torch.stack([torch.isfinite(t).all() for t in tensors]).tolist()


def named_weights(parts) -> list[tuple[str, torch.nn.Parameter]]:
    return [named for part in ("unet", "text_encoder", "vae")
            for named in getattr(parts, part).named_parameters(prefix=part)]


def non_finite_loss_error(value: float, step: int, where: str, parts,
                          trainable: list[torch.nn.Parameter]) -> NonFiniteTrainingError:
    """The error for a non-finite loss at `step`, naming the frozen weights that explain it if there are any
    (looked for only now that training fails: never on a normal step)."""
    trained = {id(p) for p in trainable}
    frozen = [(name, p) for name, p in named_weights(parts) if id(p) not in trained]
    bad = [name for (name, _), ok in zip(frozen, finite_flags([p for _, p in frozen]), strict=True) if not ok]
    if bad:
        part = getattr(parts, bad[0].split(".")[0])
        source = loaded_from(part)
        cause = (f"The base model's frozen weights are not finite ({len(bad)} tensor(s), e.g. {bad[0]}, loaded from "
                 f"{source}): its weights files are corrupted; rebuild or re-download model.pretrained.")
    else:
        cause = LIKELY_CAUSES
    return NonFiniteTrainingError(f"{where}: the loss is {value} at step {step} (counted from 0, as in the loss "
                                  f"log); training stopped and saved nothing. {cause}")


def check_trained_weights(trainable: list[torch.nn.Parameter], parts, steps_done: int, where: str) -> None:
    """NonFiniteTrainingError if a trained weight holds a NaN or an infinity, so that it is never saved.
    One pass over the trained weights: called before each save, not every step."""
    bad = [i for i, ok in enumerate(finite_flags(trainable)) if not ok]
    if not bad:
        return
    names = {id(p): name for name, p in named_weights(parts)}
    first = names.get(id(trainable[bad[0]]), f"trained parameter {bad[0]}")
    raise NonFiniteTrainingError(f"{where}: after {steps_done} step(s), {len(bad)} trained weight tensor(s) hold "
                                 f"NaN or infinity (e.g. {first}); training stopped before saving them. "
                                 f"{LIKELY_CAUSES}")


def make_accelerator(mixed_precision: str) -> Accelerator:
    # accelerate keeps one state per process and refuses a second precision in it (a notebook or a test
    # that trains twice), while ours is a per-run setting: that state is cleared first. The process's
    # distributed set-up (PartialState) is kept.
    AcceleratorState._reset_state()
    precision = "no" if mixed_precision == "fp32" else mixed_precision
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())


def parameters_of(groups: list[torch.nn.Parameter | dict]) -> list[torch.nn.Parameter]:
    """The parameters of what `Method.prepare` returns: parameters, or parameter groups."""
    return [p for group in groups for p in (group["params"] if isinstance(group, dict) else [group])]


def make_optimizer(params: list[torch.nn.Parameter | dict], lr: float, weight_decay: float,
                   use_8bit_adam: bool) -> torch.optim.Optimizer:
    """AdamW over `params` (parameters, or groups with learning rates of their own) at default rate `lr`."""
    if use_8bit_adam:  # Hardware checked that bitsandbytes is installed
        import bitsandbytes as bnb
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    # fused: one kernel over all parameters instead of a Python loop over them (CPU and GPU)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def cast_frozen(parts, trainable: list[torch.nn.Parameter], dtype: torch.dtype) -> None:
    """Frozen weights to `dtype` (autocast computes in it anyway: float32 copies would only cost memory),
    trained ones left float32, as diffusers' scripts (`weight_dtype`, `cast_training_params`). A text encoder
    with a trained weight stays float32 whole: its trained input embeddings feed its frozen layers directly,
    outside any autocast policy (textual_inversion.py keeps it float32 too)."""
    if dtype == torch.float32:
        return
    trained = {id(p) for p in trainable}
    models = [parts.unet, parts.vae]
    if not any(id(p) in trained for p in parts.text_encoder.parameters()):
        models.append(parts.text_encoder)
    for model in models:
        for p in model.parameters():
            if id(p) not in trained:
                p.data = p.data.to(dtype)


def enable_gradient_checkpointing(parts, text_encoder: bool) -> None:
    parts.unet.enable_gradient_checkpointing()
    if text_encoder:
        # non-reentrant: the encoder's layer inputs need not require grad for its LoRA weights to get one
        parts.text_encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def train(method: Method, schedule: Schedule, parts, concepts: Sequence[Concept], *, resolution: int, seed: int,
          optimization: Optimization = Optimization(), hardware: Hardware = Hardware(),
          checkpointing: Checkpointing | None = None, log: Callable[[int, float], None] | None = None,
          name: str | None = None) -> None:
    """Train `method` on `concepts` (one, or several jointly); `parts` (models.loading.Components) are changed
    in place. `name` (e.g. the run's key) names the run in errors.

    NonFiniteTrainingError at the first non-finite loss, and before saving non-finite trained weights (a
    checkpoint, or the weights this returns for the caller to save)."""
    where = f"training run {name!r}" if name else "training"
    tokens = concept_tokens(method, parts.tokenizer, concepts)
    accelerator = make_accelerator(hardware.mixed_precision)
    models = (parts.unet, parts.vae, parts.text_encoder)
    for model in models:
        model.requires_grad_(False)
    torch.manual_seed(derive_seed(seed, "init"))  # adapter initialisation
    groups = method.prepare(parts, tokens, [concept.class_name for concept in concepts])
    trainable = parameters_of(groups)
    # cast where the parts were loaded, then moved: the GPU never holds a float32 copy of a frozen weight
    cast_frozen(parts, trainable, hardware.dtype)
    for model in models:
        model.to(accelerator.device)
    if hardware.gradient_checkpointing:
        enable_gradient_checkpointing(parts, method.trains_text_encoder)

    concept_sets = [ConceptSet(parts, method, concept, token, number, resolution)
                    for number, (concept, token) in enumerate(zip(concepts, tokens, strict=True))]

    optimizer = make_optimizer(groups, schedule.lr, optimization.weight_decay, hardware.use_8bit_adam)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer)
    optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)
    start, losses = checkpoint.resume(checkpointing, trainable, optimizer, lr_scheduler) if checkpointing else (0, [])
    if start:
        print(f"resuming from the checkpoint at step {start} in {checkpointing.folder}", file=sys.stderr)
    for step, loss in enumerate(losses):  # a resumed run's log reads as if it had never stopped
        if log is not None:
            log(step, loss)

    parts.unet.train()
    parts.text_encoder.train(method.trains_text_encoder)  # checkpointing engages in training mode only
    for step in tqdm(range(start, schedule.steps), desc="train", unit="step", initial=start, total=schedule.steps):
        generator = torch.Generator().manual_seed(derive_seed(seed, "step", step))
        with accelerator.autocast():
            # concept after concept from the one generator, then the noise: one concept draws as it always has;
            # all concepts' examples go through one UNet call
            batches = [concept_set.batch(parts, schedule.batch_size, step, seed, generator)
                       for concept_set in concept_sets]
            latents = torch.cat([batch.latents for batch in batches])
            text = torch.cat([batch.text for batch in batches])
            mask = torch.cat([batch.mask for batch in batches])
            noise, timesteps = step_noise(latents, parts.noise_scheduler, generator)
            per_example = diffusion_loss(parts, latents, text, noise, timesteps, reduce=False, mask=mask)
            loss = joint_loss(concept_sets, batches, per_example)
        accelerator.backward(loss)
        if optimization.max_grad_norm is not None:
            accelerator.clip_grad_norm_(trainable, optimization.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_step(parts)
        # The loss is checked, not the gradients. With fp16, accelerate's gradient scaler skips a step whose
        # (scaled) gradients overflow and lowers its scale (accelerator.optimizer_step_was_skipped): a normal
        # event, whose loss is finite. A non-finite loss means the forward pass itself failed. Its value is
        # needed for the log anyway, so the check adds no device sync to a step.
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise non_finite_loss_error(loss_value, step, where, parts, trainable)
        losses.append(loss_value)
        if log is not None:
            log(step, losses[-1])
        done = step + 1
        if checkpointing and done % checkpointing.every == 0 and done < schedule.steps:
            check_trained_weights(trainable, parts, done, where)
            checkpoint.save(checkpointing, done, trainable, optimizer, lr_scheduler, losses)
    check_trained_weights(trainable, parts, schedule.steps, where)  # the caller saves them next
    if checkpointing:
        checkpoint.clear(checkpointing)
    parts.unet.eval()
    parts.text_encoder.eval()
