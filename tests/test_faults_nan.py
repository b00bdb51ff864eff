"""Non-finite values fail loudly: a corrupted weights file stops training at its first step, NaN trained weights
are never saved, and a pipeline with a NaN weight draws nothing (it would draw black images)."""

import dataclasses
import re
import shutil
from pathlib import Path

import pytest
import torch

from dreamstudy.data.dataset import Subject
from dreamstudy.data.dreambench import SUBJECTS
from dreamstudy.io import write_jsonl
from dreamstudy.methods import get_method, run
from dreamstudy.methods.trainer import Checkpointing, Concept, NonFiniteTrainingError, train
from dreamstudy.models.loading import load_components, load_pipeline, resolve_pretrained
from dreamstudy.params import load_params
from dreamstudy.sampling.protocol import SampleSpec
from dreamstudy.sampling.sample import NonFiniteWeightsError, generate
from dreamstudy.trainset import CAPTIONS, write_prior_set
from tests.helpers import ROOT, noise_examples, smoke_train_params

UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"
SPAN = 4096  # bytes


def corrupted_tiny_model(folder: Path) -> Path:
    """A copy of the tiny model whose UNet weights file has SPAN bytes of 0xFF (float32 NaN) in its middle:
    same size, still a valid safetensors file. The shared cache itself is never touched."""
    shutil.copytree(resolve_pretrained("tiny"), folder)
    weights = folder / UNET_WEIGHTS
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2
    data[middle:middle + SPAN] = b"\xff" * SPAN
    weights.write_bytes(bytes(data))
    return folder


def test_corrupted_base_weights_stop_training_at_its_first_step(tmp_path):
    model = corrupted_tiny_model(tmp_path / "tiny-corrupted")
    p = load_params(ROOT / "params.smoke.yaml")
    p = p.model_copy(update={"model": p.model.model_copy(update={"pretrained": str(model)})})
    training_set = tmp_path / "set"
    training_set.mkdir()
    examples = noise_examples(training_set, 2, seed=7, size=32)
    write_jsonl(training_set / CAPTIONS, [{"file": e.image.name, "caption": e.caption} for e in examples.items])
    write_prior_set(tmp_path / "prior_set.json", None)
    outputs = tmp_path / "outputs"  # where the run writes: its model and its checkpoints
    outputs.mkdir()
    with pytest.raises(NonFiniteTrainingError) as error:
        run.train_run(p, run="lora/none/dog", method_name="lora",
                      subjects=[Subject("dog", SUBJECTS["dog"], True, [], [])],
                      training_sets=[training_set], prior_sets=[tmp_path / "prior_set.json"],
                      out_dir=outputs / "model", checkpoint_dir=outputs / "checkpoint")
    message = str(error.value)
    assert message.startswith("training run 'lora/none/dog': the loss is nan at step 0 ")
    # the corrupted tensor is named (which one depends on the file's layout), and the folder it came from
    named = rf"frozen weights are not finite \(\d+ tensor\(s\), e\.g\. unet\.\S+, loaded from {re.escape(str(model))}\)"
    assert re.search(named, message)
    assert list(outputs.iterdir()) == []


def test_non_finite_trained_weights_are_never_checkpointed_or_returned(tmp_path):
    # A finite loss, then an infinity written into a trained weight (as a learning rate too high would): the check
    # before the checkpoint at step 2 stops the run, and no checkpoint is written.
    method, schedule = get_method("lora", smoke_train_params(lora={"batch_size": 1}))
    parts = load_components("tiny")
    examples = noise_examples(tmp_path, 1, seed=3, size=32)

    def poison(step, loss):
        if step == 1:
            lora_weight = next(p for name, p in parts.unet.named_parameters() if "lora" in name)
            with torch.no_grad():
                lora_weight.view(-1)[0] = float("inf")

    checkpointing = Checkpointing(tmp_path / "ckpt", every=2, fingerprint="run")
    with pytest.raises(NonFiniteTrainingError, match=r"training run 'x': after 2 step\(s\), 1 trained weight "
                                                     r"tensor\(s\) hold NaN or infinity \(e\.g\. unet\..*lora"):
        train(method, dataclasses.replace(schedule, steps=4), parts, [Concept(examples, "sks", "dog")],
              resolution=32, seed=0, checkpointing=checkpointing, log=poison, name="x")
    assert not checkpointing.folder.exists()


def test_a_pipeline_with_one_nan_weight_draws_nothing(tmp_path):
    pipe = load_pipeline("tiny")
    weight = next(p for name, p in pipe.unet.named_parameters() if name.endswith("conv_in.weight"))
    with torch.no_grad():
        weight.view(-1)[0] = float("nan")
    specs = [SampleSpec(subject="dog", prompt_index=0, prompt_kind="object", prompt="a photo of sks dog",
                        image_index=0, seed=0, file="0.png")]
    out = tmp_path / "samples"
    with pytest.raises(NonFiniteWeightsError, match=r"refusing to sample from the model in models/lora/none/dog: "
                                                    r"its unet holds NaN or infinite weights \(1 of \d+ tensors, "
                                                    r"e\.g\. conv_in\.weight; unet loaded from .*tiny-"):
        generate(pipe, specs, out, resolution=32, num_inference_steps=2, guidance_scale=7.5, batch_size=1,
                 extra={}, model_dir="models/lora/none/dog")
    assert list(tmp_path.iterdir()) == []
