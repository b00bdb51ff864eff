"""DreamBench parsing, fetching from every source, and the refusal of every kind of bad input."""

from __future__ import annotations

import importlib.util
import json
import shutil
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml
from PIL import Image

from dreamstudy.data import fetch
from dreamstudy.data.checksums import read_sha256_list, write_sha256_list
from dreamstudy.data.dataset import load_dataset
from dreamstudy.data.dreambench import SUBJECTS, DataError, parse_prompts_and_classes
from dreamstudy.data.fetch import fetch_dreambench
from dreamstudy.data.github import ARCHIVE_ROOT
from dreamstudy.params import DREAMBENCH_COMMIT
from tests.helpers import github_zip

SIZE = 32  # small normalised images keep every fetch well under a second
SHARED = Path("/work/shared/dreambench")
REPO = Path(__file__).resolve().parents[1]
PROMPTS_TEXT = (fetch.EMBEDDED_DIR / "prompts_and_classes.txt").read_text()


# --- parsing -------------------------------------------------------------------------------------

def test_parse_real_prompts_and_classes():
    parsed = parse_prompts_and_classes(PROMPTS_TEXT)
    assert parsed.classes == SUBJECTS
    objects, live = parsed.prompts["object"], parsed.prompts["live"]
    assert [p.index for p in objects] == list(range(25)) == [p.index for p in live]
    assert Counter(p.kind for p in objects) == {"recontextualization": 20, "property": 5}
    assert Counter(p.kind for p in live) == {"recontextualization": 10, "accessorization": 10, "property": 5}
    assert objects[0].template == "a {0} {1} in the jungle"
    assert objects[0].text("sks", "dog") == "a sks dog in the jungle"
    assert objects[0].text("", "dog") == "a dog in the jungle"
    assert (live[10].template, live[10].kind) == ("a {0} {1} wearing a red hat", "accessorization")
    assert (objects[24].text("sks", "vase"), objects[24].kind) == ("a cube shaped sks vase", "property")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("dog8,dog", "dog8,puppy"), "dog8"),
    (lambda t: t.replace("wolf_plushie,stuffed animal\n", ""), "wolf_plushie"),
    (lambda t: t.replace("'a wet {0} {1}'.format(unique_token, class_token),\n", "", 1), "24 prompts"),
    # code around the literal is never run: the line is simply not a prompt line
    (lambda t: t.replace("'a red {0} {1}'.format(unique_token, class_token),",
                         "__import__('os').system('echo pwned'),", 1), "unexpected line"),
    (lambda t: t.replace("'a {0} {1} in the snow'", "'a snowy scene'", 1), "lacks"),
])
def test_parse_rejects_altered_file(edit, message):
    with pytest.raises(DataError, match=message) as error:
        parse_prompts_and_classes(edit(PROMPTS_TEXT), "my_prompts.txt")
    assert "my_prompts.txt" in str(error.value)


# --- embedded source, output layout, reading it back -----------------------------------------------

def test_embedded_fetch_writes_normalised_dataset(tmp_path):
    out = tmp_path / "dreambench"
    fetch_dreambench("embedded", out, image_size=SIZE)

    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["source"], manifest["commit"]) == ("embedded", DREAMBENCH_COMMIT)
    assert manifest["image_size"] == SIZE
    subjects = manifest["subjects"]
    assert [s["name"] for s in subjects] == list(SUBJECTS)
    assert sum(len(s["files"]) for s in subjects) == 158
    assert sum(s["kind"] == "live" for s in subjects) == 9
    embedded_sums = read_sha256_list(fetch.EMBEDDED_SHA256)
    for subject in subjects:
        for entry in subject["files"]:
            assert entry["sha256"] == embedded_sums[entry["source_file"]]
            assert entry["file"] == f"images/{subject['name']}/{Path(entry['source_file']).stem}.png"
            with Image.open(out / entry["file"]) as image:
                assert (image.format, image.mode, image.size) == ("PNG", "RGB", (SIZE, SIZE))
    prompts = json.loads((out / "prompts.json").read_text())
    assert prompts["live"][10] == {"index": 10, "template": "a {0} {1} wearing a red hat",
                                   "kind": "accessorization"}
    assert (out / "LICENSE.md").read_text().startswith("# Creative Commons Attribution 4.0")

    dataset = load_dataset(out)
    dog, backpack = dataset.subjects["dog"], dataset.subjects["backpack"]
    assert (dog.class_name, dog.live, len(dog.images)) == ("dog", True, 5)
    assert dog.prompts[10].text("sks", dog.class_name) == "a sks dog wearing a red hat"
    assert (backpack.live, backpack.prompts[10].kind) == (False, "recontextualization")

    again = tmp_path / "again"
    fetch_dreambench("embedded", again, image_size=SIZE)
    assert (again / "images/dog/00.png").read_bytes() == (out / "images/dog/00.png").read_bytes()


def test_load_dataset_names_missing_output(tmp_path):
    with pytest.raises(DataError, match="fetch_data"):
        load_dataset(tmp_path / "nowhere")


# --- local source: normalisation and every kind of bad input ----------------------------------------

def repin(copy: Path) -> None:
    """Accept the copy's current files, so that checks after the checksum one are reached."""
    write_sha256_list(copy, copy / "SHA256SUMS")


def test_local_fetch_centre_crops_and_converts_to_rgb(local_copy, tmp_path):
    # a wide greyscale image: dark margins outside the central square, white inside
    image = Image.new("L", (96, 64), 30)
    image.paste(255, (16, 0, 80, 64))
    image.save(local_copy / "dog" / "00.jpg", quality=95)
    repin(local_copy)

    fetch_dreambench("local", tmp_path / "out", image_size=SIZE, local_path=local_copy)
    with Image.open(tmp_path / "out" / "images/dog/00.png") as result:
        assert (result.mode, result.size) == ("RGB", (SIZE, SIZE))
        assert result.convert("L").getextrema()[0] > 240  # only the white centre is left
    dog = next(s for s in json.loads((tmp_path / "out" / "manifest.json").read_text())["subjects"]
               if s["name"] == "dog")
    assert (dog["files"][0]["width"], dog["files"][0]["height"]) == (96, 64)


def corrupt(copy: Path) -> None:
    (copy / "dog" / "00.jpg").write_bytes(b"not a jpeg" * 50)
    repin(copy)


def truncate(copy: Path) -> None:
    image = copy / "cat" / "01.jpg"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    repin(copy)


def append_byte(copy: Path) -> None:
    image = copy / "vase" / "01.jpg"
    image.write_bytes(image.read_bytes() + b"\0")


# case -> (spoil the copy, file the error must name, words it must contain)
BAD_INPUTS = {
    "missing image": (lambda copy: (copy / "dog" / "02.jpg").unlink(), "dog/02.jpg", "missing"),
    "corrupt image": (corrupt, "dog/00.jpg", "corrupt"),
    "truncated image": (truncate, "cat/01.jpg", "truncated"),
    "non-image file": (lambda copy: (copy / "dog" / "notes.txt").write_text("hi"), "dog/notes.txt",
                       "not an image"),
    "unknown subject": (lambda copy: shutil.copytree(copy / "dog", copy / "dog4"), "dog4", "unknown subject"),
    "checksum mismatch": (append_byte, "vase/01.jpg", "checksum mismatch"),
    "altered prompt file": (lambda copy: (copy / "prompts_and_classes.txt").write_text(PROMPTS_TEXT + "\n"),
                            "prompts_and_classes.txt", "checksum mismatch"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_local_fetch_refuses_bad_input(case, local_copy, tmp_path):
    spoil, file, message = BAD_INPUTS[case]
    spoil(local_copy)
    out = tmp_path / "out" / "dreambench"
    with pytest.raises(DataError, match=message) as error:
        fetch_dreambench("local", out, image_size=SIZE, local_path=local_copy)
    assert str(local_copy / file) in str(error.value)
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no half-written temp folder either


def test_local_fetch_needs_a_folder(tmp_path):
    with pytest.raises(DataError, match="data.local_path"):
        fetch_dreambench("local", tmp_path / "out", image_size=SIZE, local_path=tmp_path / "absent")


def test_embedded_fetch_fails_clearly_without_the_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "EMBEDDED_SHA256", tmp_path / "SHA256SUMS")
    with pytest.raises(DataError, match="embedded DreamBench not found"):
        fetch_dreambench("embedded", tmp_path / "out", image_size=SIZE)


@pytest.mark.skipif(not SHARED.is_dir(), reason="full DreamBench copy not available")
def test_pinned_checksums_match_full_dreambench(tmp_path):
    fetch_dreambench("local", tmp_path / "out", image_size=SIZE, local_path=SHARED)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    pinned = read_sha256_list(fetch.DREAMBENCH_SHA256)
    files = [f for s in manifest["subjects"] for f in s["files"]]
    assert len(files) == 158 and len(pinned) == 161  # + LICENSE.md, prompts, references
    assert all(f["sha256"] == pinned[f["source_file"]] for f in files)
    assert all(f["width"] == f["height"] > 600 for f in files)  # DreamBench images are square, 615-2048 px


# --- github source, offline ------------------------------------------------------------------------

def test_github_fetch_downloads_once_and_extracts_only_the_dataset(github, tmp_path):
    cache = tmp_path / "cache"
    fetch_dreambench("github", tmp_path / "out", image_size=SIZE, cache_dir=cache)
    fetch_dreambench("github", tmp_path / "out2", image_size=SIZE, cache_dir=cache)

    assert github.urls == [f"https://github.com/google/dreambooth/archive/{DREAMBENCH_COMMIT}.zip"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"] == "github"
    assert sum(len(s["files"]) for s in manifest["subjects"]) == 158
    extracted = cache / "dreambench" / ARCHIVE_ROOT
    assert (extracted / "LICENSE.md").is_file() and (extracted / "dog" / "00.jpg").is_file()
    assert not (extracted / "README.md").exists()


def test_github_cache_from_environment(github, tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMSTUDY_CACHE", str(tmp_path / "env-cache"))
    fetch_dreambench("github", tmp_path / "out", image_size=SIZE)
    assert (tmp_path / "env-cache" / "dreambench" / f"{ARCHIVE_ROOT}.zip").is_file()


@pytest.mark.parametrize("member", [
    f"{ARCHIVE_ROOT}/dataset/../../escaped.txt",
    "/tmp/escaped.txt",
    "C:/escaped.txt",
])
def test_github_refuses_members_escaping_the_target(member, github, tmp_path):
    github.archive = github_zip(extra={member: b"evil"})
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="outside the target") as error:
        fetch_dreambench("github", tmp_path / "out", image_size=SIZE, cache_dir=cache)
    assert member in str(error.value)
    assert not (tmp_path / "out").exists() and not list((cache / "dreambench").iterdir())  # bad zip dropped
    assert not list(tmp_path.rglob("escaped.txt"))


def test_github_refuses_symlink_members(github, tmp_path):
    github.archive = github_zip(symlink=f"{ARCHIVE_ROOT}/dataset/dog/05.jpg")
    with pytest.raises(DataError, match="symbolic link") as error:
        fetch_dreambench("github", tmp_path / "out", image_size=SIZE, cache_dir=tmp_path / "cache")
    assert "dog/05.jpg" in str(error.value)


def test_github_network_failure_points_to_offline_sources(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="'local'.*'embedded'"):
        fetch_dreambench("github", tmp_path / "out", image_size=SIZE, cache_dir=tmp_path / "cache")
    assert not list(tmp_path.rglob("*.zip")) and not (tmp_path / "out").exists()


def test_github_refuses_download_that_differs_from_pinned_checksums(github, tmp_path, monkeypatch):
    pinned = tmp_path / "pinned.txt"
    pinned.write_text(fetch.EMBEDDED_SHA256.read_text().replace(
        read_sha256_list(fetch.EMBEDDED_SHA256)["dog/00.jpg"], "0" * 64))
    monkeypatch.setattr(fetch, "DREAMBENCH_SHA256", pinned)
    with pytest.raises(DataError, match="checksum mismatch") as error:
        fetch_dreambench("github", tmp_path / "out", image_size=SIZE, cache_dir=tmp_path / "cache")
    assert "dog/00.jpg" in str(error.value)


# --- the stage ---------------------------------------------------------------------------------------

def load_stage():
    spec = importlib.util.spec_from_file_location("fetch_data_stage", REPO / "stages" / "fetch_data.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    return stage


def write_params(folder: Path, **data_params) -> None:
    """The smoke params with `data_params` overriding keys of the data section, as folder/params.yaml."""
    params = yaml.safe_load((REPO / "params.smoke.yaml").read_text())
    params["data"].update(data_params)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


def test_stage_fetches_all_subjects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, image_size=SIZE)
    load_stage().main([])
    dataset = load_dataset("data/dreambench")
    assert (dataset.source, dataset.image_size, len(dataset.subjects)) == ("embedded", SIZE, 30)


def test_stage_reads_params_before_fetching(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, source="local")  # no local_path
    with pytest.raises(SystemExit, match="local_path"):
        load_stage().main(["--params", "params.yaml"])
    assert not (tmp_path / "data").exists()
