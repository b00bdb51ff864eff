"""Damaged or awkward caches and copies: a built model that no longer matches its manifest is built again,
OS leftovers in a local DreamBench copy are skipped, `~` in path params is the home folder where used, a read-only
embedding cache only stops caching, and a damaged extraction of GitHub's archive is extracted again."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dreamstudy.data.dataset import load_dataset
from dreamstudy.data.dreambench import DataError
from dreamstudy.data.fetch import fetch_dreambench
from dreamstudy.data.github import ARCHIVE_ROOT
from dreamstudy.metrics import cache as embedding_cache
from dreamstudy.metrics.cache import EmbeddingCache
from dreamstudy.models import loading, tiny
from dreamstudy.models.loading import ModelLoadError, load_components, resolve_pretrained
from dreamstudy.models.tiny_controlnet import load_controlnet
from dreamstudy.params import validate_params
from tests.test_data import SIZE, load_stage, write_params

REPO = Path(__file__).resolve().parents[1]
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- built models: checked against their manifest, built again when they differ ---------------------

def ours(stderr: str) -> list[str]:
    """This project's lines on stderr, without the progress bars of diffusers' save_pretrained."""
    return [line for line in stderr.splitlines() if line.startswith("dreamstudy: ")]


def test_truncated_file_in_built_tiny_model_is_rebuilt_to_identical_bytes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DREAMSTUDY_CACHE", str(tmp_path))  # never the real cache
    folder = Path(resolve_pretrained("tiny"))
    built = file_hashes(folder)
    assert loading.MANIFEST in built
    weights = folder / UNET_WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    capsys.readouterr()

    assert Path(resolve_pretrained("tiny")) == folder
    lines = ours(capsys.readouterr().err)
    assert len(lines) == 1 and str(weights) in lines[0] and f"rebuilding {folder}" in lines[0]
    assert file_hashes(folder) == built  # same seed, same bytes, manifest included
    assert [p.name for p in tmp_path.iterdir()] == [folder.name], "damaged copy or temporary left behind"

    resolve_pretrained("tiny")
    assert capsys.readouterr().err == ""  # intact now: used as it is (no build, so no progress bars either)


@pytest.fixture
def fake_builds(tmp_path, monkeypatch):
    """The tiny model's builder replaced by one that writes two small files; returns the calls made."""
    monkeypatch.setenv("DREAMSTUDY_CACHE", str(tmp_path))
    calls = []

    def build(folder, architecture, seed):
        calls.append(folder)
        (folder / "model_index.json").write_text("{}")
        (folder / "unet").mkdir()
        (folder / UNET_WEIGHTS).write_bytes(bytes(range(256)) * 4)

    monkeypatch.setattr(tiny, "build_random_pipeline", build)
    return calls


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))


def test_changed_byte_is_caught_by_sha256_below_the_hash_limit(fake_builds, capsys):
    folder = Path(resolve_pretrained("tiny"))
    flip_a_byte(folder / UNET_WEIGHTS)
    resolve_pretrained("tiny")
    assert len(fake_builds) == 2
    assert f"{folder / UNET_WEIGHTS}: sha256 differs" in capsys.readouterr().err
    assert (folder / UNET_WEIGHTS).read_bytes() == bytes(range(256)) * 4


def test_large_folders_are_checked_by_size_only(fake_builds, monkeypatch):
    """As sd15-random (4.3 GB): its files' sizes are checked, their sha256 would cost seconds per process."""
    monkeypatch.setattr(loading, "HASH_LIMIT_BYTES", 0)
    folder = Path(resolve_pretrained("tiny"))
    flip_a_byte(folder / UNET_WEIGHTS)
    resolve_pretrained("tiny")
    assert len(fake_builds) == 1  # same size: not noticed
    (folder / UNET_WEIGHTS).write_bytes(b"short")
    resolve_pretrained("tiny")
    assert len(fake_builds) == 2


@pytest.mark.parametrize("damage, words", [
    (lambda folder: (folder / loading.MANIFEST).unlink(), "manifest.json: missing"),
    (lambda folder: (folder / loading.MANIFEST).write_text("{not json"), "manifest.json: unreadable"),
    (lambda folder: (folder / UNET_WEIGHTS).unlink(), f"{UNET_WEIGHTS}: missing"),
])
def test_incomplete_built_folder_is_rebuilt(damage, words, fake_builds, capsys):
    folder = Path(resolve_pretrained("tiny"))
    damage(folder)
    capsys.readouterr()
    resolve_pretrained("tiny")
    assert len(fake_builds) == 2 and words in capsys.readouterr().err
    assert loading.built_folder_damage(folder) is None


def test_built_model_that_fails_to_load_says_to_delete_it_not_to_go_online(fake_builds):
    folder = Path(resolve_pretrained("tiny"))  # passes its manifest check, but has no text encoder
    with pytest.raises(ModelLoadError) as caught:
        load_components("tiny")
    message = str(caught.value)
    assert str(folder) in message and "delete that folder" in message
    assert "internet" not in message and "model.pretrained: tiny" not in message


# --- local DreamBench copy: OS leftovers ---------------------------------------------------------------

def add_os_leftovers(copy: Path) -> list[str]:
    (copy / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (copy / "dog" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (copy / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (copy / "__MACOSX" / "dog").mkdir(parents=True)
    (copy / "__MACOSX" / "dog" / "._00.jpg").write_bytes(b"\0\5\26\7")
    (copy / "cat" / "._x.jpg").write_bytes(b"\0\5\26\7")
    return [".DS_Store", "dog/Thumbs.db", "desktop.ini", "__MACOSX/", "cat/._x.jpg"]


def test_local_copy_with_os_leftovers_loads_and_names_them(local_copy, tmp_path, capsys):
    leftovers = add_os_leftovers(local_copy)
    fetch_dreambench("local", tmp_path / "out", image_size=SIZE, local_path=local_copy)
    assert len(load_dataset(tmp_path / "out").subjects) == 30
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and str(local_copy) in lines[0] and "ignored 5" in lines[0]
    assert all(name in lines[0] for name in leftovers)


@pytest.mark.parametrize("stray", ["dog/notes.txt", "notes.txt"])
def test_other_unexpected_files_are_still_errors(stray, local_copy, tmp_path):
    add_os_leftovers(local_copy)
    (local_copy / stray).write_text("hi")
    with pytest.raises(DataError) as caught:
        fetch_dreambench("local", tmp_path / "out", image_size=SIZE, local_path=local_copy)
    assert str(local_copy / stray) in str(caught.value)


# --- `~` in path params --------------------------------------------------------------------------------

def smoke_params(**changes) -> dict:
    raw = yaml.safe_load((REPO / "params.smoke.yaml").read_text())
    for key, value in changes.items():
        section, _, name = key.rpartition(".")
        node = raw
        for part in section.split("."):
            node = node.setdefault(part, {})
        node[name] = value
    return raw


def test_home_is_expanded_where_a_path_is_used_and_kept_as_written_in_params(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    p = validate_params(smoke_params(**{"data.source": "local", "data.local_path": "~/x",
                                        "model.pretrained": "~/sd", "aug.controlnet.model": "~/canny"}))
    # as written: the DAG's inputs are the same on every machine, whatever its home folder
    assert (p.data.local_path, p.model.pretrained, p.aug.controlnet.model) == ("~/x", "~/sd", "~/canny")
    with pytest.raises(ModelLoadError, match=f"{tmp_path / 'canny'}"):
        load_controlnet("~/canny")  # looked for in the home folder
    with pytest.raises(ModelLoadError, match="~/sd: no such folder"):
        resolve_pretrained("~/sd")
    (tmp_path / "sd").mkdir()
    with pytest.raises(ModelLoadError, match=f"{tmp_path / 'sd'}: not a diffusers pipeline folder"):
        resolve_pretrained("~/sd")


def test_fetch_data_stage_reads_a_local_copy_under_home(local_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    write_params(work, source="local", local_path=f"~/{local_copy.name}", image_size=SIZE)
    load_stage().main([])
    assert len(load_dataset("data/dreambench").subjects) == 30


# --- embedding cache that cannot be written ------------------------------------------------------------

class ColourEncoders:
    """An image's embedding is its mean colour, unit length; counts the images it encodes."""

    def __init__(self):
        self.encoded = 0

    def cache_key(self, which: str) -> str:
        return f"colour-{which}"

    def embed_images(self, which, images, batch_size=32) -> torch.Tensor:
        self.encoded += len(images)
        colours = torch.tensor(np.array([np.asarray(image, dtype=np.float32).mean(axis=(0, 1)) for image in images]))
        return torch.nn.functional.normalize(colours, dim=1)


def colour_images(folder: Path, colours) -> list[Path]:
    paths = [folder / f"{index}.png" for index in range(len(colours))]
    for path, colour in zip(paths, colours):
        Image.new("RGB", (8, 8), colour).save(path)
    return paths


def read_only_filesystem(root: Path, monkeypatch) -> None:
    """Writes into the cache fail as on a read-only mount (a chmod does not stop root, who runs these tests)."""
    def refuse(path, mode="w"):
        raise OSError(errno.EROFS, "Read-only file system", str(path))
    monkeypatch.setattr(embedding_cache, "atomic_file", refuse)


def folder_under_a_file(root: Path, monkeypatch) -> None:
    root.parent.write_text("a file where the cache's folder should be")


@pytest.mark.parametrize("make_unwritable", [read_only_filesystem, folder_under_a_file])
def test_unwritable_embedding_cache_warns_once_and_embeds_in_memory(make_unwritable, tmp_path, monkeypatch):
    paths = colour_images(tmp_path, [(255, 0, 0), (0, 0, 255), (0, 255, 0)])
    root = tmp_path / "cache" / "embeddings"
    make_unwritable(root, monkeypatch)
    encoders = ColourEncoders()
    cache = EmbeddingCache(encoders, root)
    with pytest.warns(UserWarning, match="embedding cache not writable") as warned:
        embeddings = cache.images("clip", paths)
        again = cache.images("clip", paths)  # in memory now: no new attempt, no second warning
    assert len(warned) == 1 and str(root) in str(warned[0].message)
    assert torch.allclose(embeddings, torch.eye(3)[[0, 2, 1]]) and torch.equal(again, embeddings)
    assert encoders.encoded == 3


def test_read_only_cache_still_serves_what_it_holds(tmp_path, monkeypatch):
    red, blue = colour_images(tmp_path, [(255, 0, 0), (0, 0, 255)])
    root = tmp_path / "embeddings"
    EmbeddingCache(ColourEncoders(), root).images("dino", [red])
    read_only_filesystem(root, monkeypatch)
    encoders = ColourEncoders()
    with pytest.warns(UserWarning, match="not writable"):
        EmbeddingCache(encoders, root).images("dino", [red, blue])
    assert encoders.encoded == 1  # red came from the cache


# --- extraction of GitHub's archive ----------------------------------------------------------------------

def test_damaged_extracted_files_are_extracted_again(github, tmp_path, capsys):
    cache = tmp_path / "cache"
    fetch_dreambench("github", tmp_path / "out", image_size=SIZE, cache_dir=cache)
    extracted = cache / "dreambench" / ARCHIVE_ROOT
    intact = file_hashes(extracted)
    truncated, flipped, deleted = extracted / "dog" / "00.jpg", extracted / "cat" / "01.jpg", extracted / "LICENSE.md"
    truncated.write_bytes(truncated.read_bytes()[:100])
    flip_a_byte(flipped)  # same size: the CRC-32 tells
    deleted.unlink()
    capsys.readouterr()

    fetch_dreambench("github", tmp_path / "out2", image_size=SIZE, cache_dir=cache)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "3 file(s)" in lines[0] and "extracting them again" in lines[0]
    assert all(name in lines[0] for name in ("dog/00.jpg", "cat/01.jpg", "LICENSE.md"))
    assert file_hashes(extracted) == intact
    assert len(github.urls) == 1  # from the cached archive, not downloaded again

    fetch_dreambench("github", tmp_path / "out3", image_size=SIZE, cache_dir=cache)
    assert capsys.readouterr().err == ""
