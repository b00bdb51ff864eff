"""The report stage on a synthetic results/ tree: 2 subjects, 1 method, 2 strategies, tiny PNGs."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dreamstudy.io import write_json, write_jsonl
from dreamstudy.report import ResultsError, load_results, write_report
from dreamstudy.report.figures import dino_vs_clip_t_figure, metrics_figure, samples_figure
from dreamstudy.report.ablation import write_ablation_report
from dreamstudy.report.load import RANDOM_INIT_LABEL, TINY_MODEL_LABEL

REPO = Path(__file__).resolve().parents[1]
SUBJECTS = {"dog": "dog", "backpack": "backpack"}
STRATEGIES = ["none", "classic"]
PROMPTS = ["a sks {} in the jungle", "a sks {} in the snow", "a sks {} on the beach"]
IMAGES_PER_PROMPT = 2
# Scores chosen so that every mean is known: dino = strategy base + subject offset + 0.02 * image_index.
DINO_BASE = {"none": 0.4, "classic": 0.5}
SUBJECT_OFFSET = {"dog": 0.0, "backpack": 0.25}
EXPECTED_FILES = {f"figures/{name}.{ext}" for name in ["metrics", "dino_vs_clip_t", "samples_dog",
                                                       "samples_backpack"] for ext in ["pdf", "png"]}
EXPECTED_FILES |= {"tables/main.tex", "tables/per_subject.tex"}


def make_results(root: Path, pretrained: bool = False, strategies: list[str] = STRATEGIES,
                 model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5") -> Path:
    """A results/ tree as the sample and evaluate stages write it."""
    rows = []
    for strategy in strategies:
        for subject, subject_class in SUBJECTS.items():
            folder = root / "samples" / "lora" / strategy / subject
            folder.mkdir(parents=True)
            samples = []
            for prompt_index, template in enumerate(PROMPTS):
                for image_index in range(IMAGES_PER_PROMPT):
                    file = f"{prompt_index:02d}_{image_index}.png"
                    color = (40 * prompt_index, 100 * image_index, 200 if strategy == "none" else 50)
                    Image.new("RGB", (8, 8), color).save(folder / file)
                    sample = {"subject": subject, "class": subject_class, "method": "lora", "strategy": strategy,
                              "prompt_index": prompt_index, "prompt_kind": "recontextualization",
                              "prompt": template.format(subject_class), "identifier": "sks",
                              "image_index": image_index, "seed": 7, "file": file, "model": model}
                    samples.append(sample)
                    dino = DINO_BASE.get(strategy, 0.3 + 0.05 * strategies.index(strategy)) + \
                        SUBJECT_OFFSET[subject] + 0.02 * image_index
                    rows.append({**sample, "dino": dino, "clip_i": dino + 0.2, "clip_t": 0.3})
            write_jsonl(folder / "samples.jsonl", samples)
    per_image = pd.DataFrame(rows).drop(columns=["identifier", "model"])
    (root / "metrics").mkdir()
    per_image.to_csv(root / "metrics" / "per_image.csv", index=False)
    keys = ["method", "strategy", "subject", "class"]
    per_subject = per_image.groupby(keys, sort=False)[["dino", "clip_i", "clip_t"]].mean().reset_index()
    per_subject.insert(4, "live", per_subject["class"].isin(["dog", "cat"]))
    per_subject.to_csv(root / "metrics" / "per_subject.csv", index=False)
    per_prompt = per_image.groupby([*keys, "prompt_index"], sort=False)[["dino", "clip_i", "clip_t"]].mean()
    per_prompt.reset_index().to_csv(root / "metrics" / "per_prompt.csv", index=False)
    write_json(root / "metrics" / "summary.json", {"lora": {
        strategy: {"dino": 0.0, "clip_i": 0.0, "clip_t": 0.0, "n_images": 12} for strategy in strategies}})
    write_json(root / "metrics" / "encoders.json", {"pretrained": pretrained, "clip": "ViT-B-32/openai",
                                                     "dino": "dino_vits16"})
    return root


@pytest.fixture(scope="module")
def random_init_results(tmp_path_factory) -> Path:
    return make_results(tmp_path_factory.mktemp("random") / "results", pretrained=False)


@pytest.fixture(scope="module")
def paper(random_init_results, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("paper") / "paper"
    write_report(load_results(random_init_results), out, seed=0)
    return out


def produced(out: Path) -> set[str]:
    return {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}


def test_every_file_is_produced_and_nothing_else(paper):
    assert produced(paper) == EXPECTED_FILES
    for png in paper.glob("figures/*.png"):
        with Image.open(png) as image:
            assert image.width > 100 and image.height > 100


def test_tables_are_booktabs_with_caption_and_label(paper):
    for tex in paper.glob("tables/*.tex"):
        text = tex.read_text()
        for rule in [r"\toprule", r"\midrule", r"\bottomrule", r"\caption{", r"\label{tab:"]:
            assert rule in text, f"{tex.name} lacks {rule}"


def test_main_table_holds_the_means_over_images(paper):
    text = (paper / "tables" / "main.tex").read_text()
    # none: (0.4 + 0.42 + 0.65 + 0.67) / 4 = 0.535 over the 12 images; classic is 0.1 higher.
    assert re.search(r"^lora & none & 0\.535 & 0\.735 & 0\.300 & 12 \\\\$", text, re.MULTILINE), text
    assert re.search(r"^lora & classic & 0\.635 & 0\.835 & 0\.300 & 12 \\\\$", text, re.MULTILINE), text


def test_per_subject_table_has_a_row_per_subject_and_escapes_latex(paper):
    text = (paper / "tables" / "per_subject.tex").read_text()
    assert r"\multicolumn{3}{c}{lora / none}" in text
    # backpack, none: 0.4 + 0.25 + 0.01 = 0.660; classic: 0.760; escaped encoder name in the caption.
    assert re.search(r"^backpack & backpack & 0\.660 & 0\.860 & 0\.300 & 0\.760 & ", text, re.MULTILINE), text
    assert r"dino\_vits16" in text


def test_random_init_label_in_every_caption(paper, random_init_results):
    for tex in paper.glob("tables/*.tex"):
        assert RANDOM_INIT_LABEL in tex.read_text()
    results = load_results(random_init_results)
    for figure in figure_titles(results):
        assert RANDOM_INIT_LABEL in figure


def test_no_random_init_label_with_pretrained_encoders(tmp_path):
    results = load_results(make_results(tmp_path / "results", pretrained=True))
    write_report(results, tmp_path / "paper", seed=0)
    for tex in (tmp_path / "paper").glob("tables/*.tex"):
        assert "random-init" not in tex.read_text().lower()
    for title in figure_titles(results):
        assert "random-init" not in title.lower()


def test_tiny_model_label_in_every_caption(tmp_path):
    results = load_results(make_results(tmp_path / "results", pretrained=True, model="tiny"))
    write_report(results, tmp_path / "paper", seed=0)
    for tex in (tmp_path / "paper").glob("tables/*.tex"):
        assert TINY_MODEL_LABEL in tex.read_text()
    assert all(TINY_MODEL_LABEL in title for title in figure_titles(results))


def figure_titles(results) -> list[str]:
    figures = [metrics_figure(results, seed=0), dino_vs_clip_t_figure(results), samples_figure(results, "dog", 4)]
    return [figure.get_suptitle() for figure in figures]


def test_metric_bars_are_means_over_subjects(random_init_results):
    figure = metrics_figure(load_results(random_init_results), seed=0)
    dino_panel = figure.axes[0]
    assert dino_panel.get_title() == "DINO"
    heights = sorted(round(bar.get_height(), 6) for bar in dino_panel.patches if bar.get_height() > 0)
    assert heights == [0.535, 0.635]
    assert len(dino_panel.lines) == 2  # one CI error bar per strategy


def test_sample_grid_rows_are_runs_and_columns_prompts(random_init_results):
    figure = samples_figure(load_results(random_init_results), "backpack", n_prompts=2)
    axes = np.array(figure.axes).reshape(2, 2)
    titles = [ax.get_title().replace("\n", " ") for ax in axes[0]]  # long prompts are wrapped
    assert titles == ["a sks backpack in the jungle", "a sks backpack in the snow"]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["lora\nnone", "lora\nclassic"]
    shown = axes[1, 1].get_images()[0].get_array()
    assert tuple(shown[0, 0]) == (40, 0, 50)  # classic, prompt 1, image 0


def test_two_runs_give_identical_files(paper, random_init_results, tmp_path):
    again = tmp_path / "paper"
    write_report(load_results(random_init_results), again, seed=0)
    for name in sorted(EXPECTED_FILES):
        assert (again / name).read_bytes() == (paper / name).read_bytes(), name
    for pdf in again.glob("figures/*.pdf"):  # runs a second apart would differ by it
        assert b"/CreationDate" not in pdf.read_bytes()


def test_failed_report_leaves_previous_output(paper, random_init_results, tmp_path, monkeypatch):
    out = tmp_path / "paper"
    write_report(load_results(random_init_results), out, seed=0)
    before = {name: (out / name).read_bytes() for name in EXPECTED_FILES}

    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr("dreamstudy.report.figures.samples_figure", broken)
    with pytest.raises(RuntimeError, match="drawing failed"):
        write_report(load_results(random_init_results), out, seed=1)
    assert produced(out) == EXPECTED_FILES  # no half-written files, no temporary folders
    assert {name: (out / name).read_bytes() for name in EXPECTED_FILES} == before


@pytest.mark.parametrize("damage, named", [
    (lambda r: (r / "metrics" / "per_image.csv").unlink(), "per_image.csv"),
    (lambda r: (r / "metrics" / "encoders.json").write_text(json.dumps({"pretrained": "no"})), "encoders.json"),
    (lambda r: (r / "samples" / "lora" / "classic" / "dog" / "01_1.png").unlink(), "01_1.png"),
    (lambda r: (r / "samples" / "lora" / "none" / "backpack" / "samples.jsonl").unlink(), "samples.jsonl"),
    (lambda r: pd.read_csv(r / "metrics" / "per_subject.csv").drop(columns="clip_t")
     .to_csv(r / "metrics" / "per_subject.csv", index=False), "per_subject.csv"),
])
def test_bad_input_names_the_file(tmp_path, damage, named):
    results_dir = make_results(tmp_path / "results")
    damage(results_dir)
    with pytest.raises(ResultsError, match=re.escape(named)):
        load_results(results_dir)


def test_stage_writes_paper_from_results(random_init_results, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("report_stage", REPO / "stages" / "report.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    shutil.copytree(random_init_results, tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    stage.main(["--params", str(REPO / "params.smoke.yaml")])
    assert produced(tmp_path / "paper") == EXPECTED_FILES


def test_ablation_report(tmp_path):
    labels = ["classic@0.5", "classic@1.0", "scale@0.5", "scale@1.0"]
    results = load_results(make_results(tmp_path / "results", strategies=labels))
    written = write_ablation_report(results, tmp_path / "paper", seed=0)
    assert {p.name for p in written} == {"ablation.tex", "plane.pdf", "plane.png", "strength.pdf", "strength.png"}
    tex = (tmp_path / "paper" / "ablation.tex").read_text()
    # the synthetic DINO grows with the label's position: scale@1.0 is best; CLIP-T ties everywhere
    assert re.search(r"^scale & 1 & \\textbf\{0\.585\} & \\textbf\{0\.785\} & \\textbf\{0\.300\}", tex, re.M), tex
    assert re.search(r"^classic & 0\.5 & 0\.435 & 0\.635 & ", tex, re.MULTILINE), tex
