"""Models: SD's tokenizer rebuilt offline, the tiny SD-architecture pipeline, and loading by name."""

import hashlib
import time
from pathlib import Path

import huggingface_hub.constants
import open_clip
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from dreamstudy.models import loading, sd15, tiny
from dreamstudy.models.loading import ModelLoadError, load_components, load_pipeline, resolve_pretrained
from dreamstudy.models.tiny import build_random_pipeline
from dreamstudy.models.tokenizer import write_clip_tokenizer

PROMPTS = [
    "a sks dog in the jungle",
    "a sks backpack with a wheat field in the background",
    "a red sks cup on top of pink fabric",
    "A SKS Teapot, floating on top of WATER!",
    "it's   a cat's toy; 3D-rendered, 12345 px...",
    "sks",
    "a qwxzt zyxw in Ünïcödé café 東京 🙂",
]
EOS_ID = 49407


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("cache")
        patch.setenv("DREAMSTUDY_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def tiny_folder(cache):
    return Path(resolve_pretrained("tiny"))


@pytest.fixture
def offline(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE at import; patch the constant too, so no request is attempted.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def openclip_ids(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer([prompt])[0].tolist()
    return ids[: ids.index(EOS_ID) + 1]


def test_tokenizer_ids_match_openai_clip(tmp_path):
    write_clip_tokenizer(tmp_path)
    ours = CLIPTokenizer.from_pretrained(tmp_path)
    reference = open_clip.get_tokenizer("ViT-L-14")
    for prompt in PROMPTS:
        assert ours(prompt).input_ids == openclip_ids(reference, prompt), prompt
    assert len(ours) == 49408 and ours.model_max_length == 77
    padded = ours(PROMPTS[0], padding="max_length", max_length=ours.model_max_length).input_ids
    assert len(padded) == 77 and padded[-1] == ours.pad_token_id == EOS_ID


def test_tiny_pipeline_has_sd_settings(tiny_folder):
    components = load_components("tiny")
    assert isinstance(components.noise_scheduler, DDPMScheduler)
    scheduler = components.noise_scheduler.config
    betas = (scheduler.beta_schedule, scheduler.beta_start, scheduler.beta_end)
    assert betas == ("scaled_linear", 0.00085, 0.012)
    assert scheduler.num_train_timesteps == 1000 and scheduler.clip_sample is False
    assert components.unet.config.cross_attention_dim == components.text_encoder.config.hidden_size
    assert components.vae.config.latent_channels == components.unet.config.in_channels == 4
    reference = open_clip.get_tokenizer("ViT-L-14")
    assert components.tokenizer(PROMPTS[0]).input_ids == openclip_ids(reference, PROMPTS[0])
    assert not list(tiny_folder.rglob("*.bin")), "weights must be safetensors"


def test_tiny_pipeline_generates_requested_size(tiny_folder):
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_folder)  # stock diffusers, no project code
    assert pipeline.vae_scale_factor == 8

    def generate():
        return pipeline("a sks dog", height=32, width=40, num_inference_steps=2, output_type="np",
                        generator=torch.Generator().manual_seed(3)).images

    images = generate()
    assert images.shape == (1, 32, 40, 3)
    assert (generate() == images).all()


def test_tiny_build_is_bit_identical_per_seed(tiny_folder, tmp_path):
    build_random_pipeline(tmp_path / "same", seed=loading.TINY_SEED)
    built = file_hashes(tiny_folder)
    assert file_hashes(tmp_path / "same") == {name: h for name, h in built.items() if name != loading.MANIFEST}
    loading.write_manifest(tmp_path / "same")
    assert file_hashes(tmp_path / "same") == built  # the manifest too: no timestamps
    build_random_pipeline(tmp_path / "other", seed=loading.TINY_SEED + 1)
    unet_weights = "unet/diffusion_pytorch_model.safetensors"
    assert file_hashes(tmp_path / "other")[unet_weights] != file_hashes(tiny_folder)[unet_weights]


def test_tiny_unet_step_is_fast(tiny_folder):
    unet = load_components("tiny").unet
    latents, text = torch.randn(1, 4, 4, 4), torch.randn(1, 77, tiny.TEXT_WIDTH)  # 32 px image
    unet(latents, 500, text).sample.mean().backward()  # warm-up
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        unet(latents, 500, text).sample.mean().backward()
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.1


def test_tiny_is_cached_not_rebuilt(tiny_folder, monkeypatch):
    monkeypatch.setattr(tiny, "build_random_pipeline", lambda *a, **k: pytest.fail("rebuilt a cached model"))
    assert Path(resolve_pretrained("tiny")) == tiny_folder


def test_concurrent_tiny_builders_keep_one_complete_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMSTUDY_CACHE", str(tmp_path))
    final = tmp_path / f"tiny-{loading.random_model_fingerprint()}"

    def build_while_another_finishes(folder, architecture, seed):
        (folder / "model_index.json").write_text("loser")
        final.mkdir()  # the other builder renames its complete folder into place first
        (final / "model_index.json").write_text("winner")
        loading.write_manifest(final)

    monkeypatch.setattr(tiny, "build_random_pipeline", build_while_another_finishes)
    assert Path(resolve_pretrained("tiny")) == final
    assert (final / "model_index.json").read_text() == "winner"
    assert [p.name for p in tmp_path.iterdir()] == [final.name], "temporary build left behind"


def test_failed_tiny_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMSTUDY_CACHE", str(tmp_path))

    def broken_build(folder, architecture, seed):
        (folder / "model_index.json").write_text("half")
        raise RuntimeError("out of disk")

    monkeypatch.setattr(tiny, "build_random_pipeline", broken_build)
    with pytest.raises(RuntimeError, match="out of disk"):
        resolve_pretrained("tiny")
    assert list(tmp_path.iterdir()) == []


def test_sd15_random_has_sd15s_exact_size(tmp_path, monkeypatch):
    """sd15-random is SD 1.5's architecture: the parameter counts of its three models, built on the meta
    device (no memory), are stable-diffusion-v1-5's, and the name resolves to its own cached folder."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd15.UNET_CONFIG)
        vae = AutoencoderKL(**sd15.VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**sd15.TEXT_ENCODER_CONFIG))
    sizes = [sum(p.numel() for p in model.parameters()) for model in (unet, text_encoder, vae)]
    assert sizes == [859_520_964, 123_060_480, 83_653_863]

    monkeypatch.setenv("DREAMSTUDY_CACHE", str(tmp_path))
    built = []
    monkeypatch.setattr(tiny, "build_random_pipeline",
                        lambda folder, architecture, seed: built.append(architecture) or
                        (folder / "model_index.json").write_text("{}"))
    folder = Path(resolve_pretrained("sd15-random"))
    assert built == [sd15.ARCHITECTURE] and folder.name.startswith("sd15-random-")
    assert loading.random_model_fingerprint("sd15-random") != loading.random_model_fingerprint("tiny")


def test_local_folder_needs_model_index(tmp_path):
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        resolve_pretrained(str(tmp_path))
    (tmp_path / "model_index.json").write_text("{}")
    assert resolve_pretrained(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ModelLoadError, match="no such folder"):
        resolve_pretrained(str(tmp_path / "missing"))


def test_hub_id_passes_through():
    hub_id = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert resolve_pretrained(hub_id) == hub_id


@pytest.mark.parametrize("load", [load_pipeline, load_components])
@pytest.mark.parametrize("hub_id", ["nobody-dreamstudy/no-such-model", "not a valid id"])
def test_unavailable_hub_id_explains_what_to_do(offline, load, hub_id):
    with pytest.raises(ModelLoadError) as caught:
        load(hub_id)
    message = str(caught.value)
    assert f"'{hub_id}'" in message
    assert "model.pretrained: tiny" in message and "hf auth login" in message and "HF_HOME" in message
