"""The report stage on a synthetic results/ tree of the results schema: 2 subjects, 1 method, 2 strategies, tiny
PNGs, and every number chosen so that what lands in the tables and figures is known."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dreamstudy.io import read_jsonl, write_json, write_jsonl
from dreamstudy.models.loading import RANDOM_MODELS
from dreamstudy.params import LoraParams
from dreamstudy.report import ResultsError, Settings, load_results, write_report
from dreamstudy.report.ablation import strength_figure, write_ablation_report
from dreamstudy.report.figures import breakdown_figure, dino_vs_clip_t_figure, metrics_figure, samples_figure
from dreamstudy.report.latex import escape_latex
from dreamstudy.report.load import RANDOM_INIT_LABEL, RANDOM_MODEL_LABEL, STAT_METRICS
from dreamstudy.report.multi import sample_grids
from dreamstudy.report.overfitting import memorization_figure, overfitting_figure
from dreamstudy.report.plotting import plt
from dreamstudy.report.published import load_published
from dreamstudy.report.tables import main_table

REPO = Path(__file__).resolve().parents[1]
SUBJECTS = {"dog": "dog", "backpack": "backpack"}
STRATEGIES = ["none", "classic"]
PROMPTS = ["a sks {} in the jungle", "a sks {} in the snow", "a sks {} on the beach"]
IMAGES_PER_PROMPT = 2
THRESHOLD = 0.9
# Scores chosen so that every mean is known: dino = strategy base + subject offset + 0.02 * image_index.
DINO_BASE = {"none": 0.4, "classic": 0.5}
SUBJECT_OFFSET = {"dog": 0.0, "backpack": 0.25}
# mem_dino = 0.6 + subject offset + 0.1 * image_index: only backpack's image 1 (0.95) is above THRESHOLD, so a
# quarter of each run's images is memorized (dog 0, backpack 0.5).
DIV = {"none": 0.2, "classic": 0.3}
PRES = {"none": 0.5, "classic": 0.4}     # classic / backpack has no pres.jsonl: NaN
PRES_BASE = {"dog": 0.45}                # backpack has no class images: NaN
CI = (-0.010, +0.020)                    # every interval of stats.csv: mean - 0.010, mean + 0.020
CONFIDENCE, ALPHA = 0.95, 0.05           # the gather's eval.confidence and eval.alpha, recorded in stats / tests
REAL = {"dog": (0.8, 0.9), "backpack": (0.7, 0.85)}  # dino, clip_i among the real photos
FIGURES = ["metrics", "dino_vs_clip_t", "breakdown", "overfitting", "memorization", "samples_dog",
           "samples_backpack"]
EXPECTED_FILES = {f"figures/{name}.{ext}" for name in FIGURES for ext in ["pdf", "png"]}
EXPECTED_FILES |= {f"tables/{name}.tex" for name in ["main", "overfitting", "breakdown", "per_subject", "settings",
                                                     "numbers"]} | {"figures/samples.tex"}
SETTINGS = Settings({"lora": LoraParams(lr=1e-4, steps=500, rank=8)}, class_images=200, prior_weight=1.0,
                    strength=0.5)
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


PROTOCOL = {"scheduler": "ddim", "num_inference_steps": 50}  # DreamBench's sampling


def make_results(root: Path, pretrained: bool = False, strategies: list[str] = STRATEGIES, model: str = SD15,
                 confidence: float = CONFIDENCE, alpha: float = ALPHA, sampling: dict = PROTOCOL,
                 method: str = "lora") -> Path:
    """A results/ tree as the sample and gather stages write it; `sampling`: the samples' scheduler and
    num_inference_steps, or a function of (strategy, subject) that gives them."""
    per_image = make_samples(root, strategies, model, sampling, method)
    metrics = root / "metrics"
    metrics.mkdir()
    per_image.to_csv(metrics / "per_image.csv", index=False)
    keys = ["method", "strategy", "subject", "class", "live"]
    scores = ["dino", "clip_i", "clip_t", "memorized"]
    per_prompt = per_image.groupby([*keys, "prompt_index"], sort=False)[scores].mean().reset_index()
    per_prompt["div"] = per_prompt["strategy"].map(DIV)
    per_prompt.to_csv(metrics / "per_prompt.csv", index=False)
    per_subject = per_image.groupby(keys, sort=False)[scores].mean().reset_index()
    per_subject["div"] = per_subject["strategy"].map(DIV)
    no_pres = (per_subject["strategy"] == "classic") & (per_subject["subject"] == "backpack")
    per_subject["pres"] = per_subject["strategy"].map(PRES).mask(no_pres)
    per_subject["pres_base"] = per_subject["subject"].map(PRES_BASE)
    per_subject.to_csv(metrics / "per_subject.csv", index=False)
    stats = (per_subject.melt(id_vars=["method", "strategy"], value_vars=list(STAT_METRICS), var_name="metric")
             .groupby(["method", "strategy", "metric"], sort=False)["value"].agg(["mean", "count"]).reset_index())
    stats = stats.assign(ci_low=stats["mean"] + CI[0], ci_high=stats["mean"] + CI[1], confidence=confidence).rename(
        columns={"count": "n_subjects"})
    stats.to_csv(metrics / "stats.csv", index=False)
    if "none" in strategies:  # the evaluate stage tests only against a `none` in the grid
        pd.DataFrame([{"method": method, "strategy": strategies[-1], "baseline": "none", "metric": metric,
                       "mean_diff": 0.1 if metric == "dino" else 0.0, "p_value": 0.01 if metric == "dino" else 0.5,
                       "test": "wilcoxon", "n_subjects": 2, "significant": metric == "dino", "alpha": alpha}
                      for metric in STAT_METRICS]).to_csv(metrics / "tests.csv", index=False)
    pd.DataFrame([{"subject": s, "dino": d, "clip_i": c} for s, (d, c) in REAL.items()]).to_csv(
        metrics / "real_images.csv", index=False)
    breakdown = pd.concat([
        per_image.assign(by="prompt_kind", group=per_image["prompt_kind"]),
        per_image.assign(by="live", group=per_image["live"]),  # written as True / False
    ]).melt(id_vars=["method", "strategy", "by", "group"], value_vars=["dino", "clip_i", "clip_t", "memorized"],
            var_name="metric").groupby(["method", "strategy", "by", "group", "metric"], sort=False)["value"].mean()
    breakdown.reset_index().to_csv(metrics / "breakdown.csv", index=False)
    write_json(metrics / "summary.json", {method: {s: {"dino": 0.0, "n_images": 12} for s in strategies}})
    write_json(metrics / "encoders.json", {"pretrained": pretrained, "clip": "ViT-B-32 (openai)",
                                           "dino": "dino_vits16", "lpips": "alex (random backbone)"})
    return root


def make_samples(root: Path, strategies: list[str], model: str, sampling, method: str) -> pd.DataFrame:
    """Sample folders with samples.jsonl and 8 px PNGs; returns per_image.csv's rows."""
    rows = []
    for strategy in strategies:
        for subject, subject_class in SUBJECTS.items():
            folder = root / "samples" / method / strategy / subject
            folder.mkdir(parents=True)
            samples = []
            for prompt_index, template in enumerate(PROMPTS):
                for image_index in range(IMAGES_PER_PROMPT):
                    file = f"{prompt_index:02d}_{image_index}.png"
                    color = (40 * prompt_index, 100 * image_index, 200 if strategy == "none" else 50)
                    Image.new("RGB", (8, 8), color).save(folder / file)
                    sample = {"subject": subject, "class": subject_class, "method": method, "strategy": strategy,
                              "prompt_index": prompt_index, "prompt_kind": "recontextualization",
                              "prompt": template.format(subject_class), "identifier": "sks",
                              "image_index": image_index, "seed": 7, "file": file, "model": model,
                              **(sampling(strategy, subject) if callable(sampling) else sampling)}
                    samples.append(sample)
                    dino = DINO_BASE.get(strategy, 0.3 + 0.05 * strategies.index(strategy)) + \
                        SUBJECT_OFFSET[subject] + 0.02 * image_index
                    mem_dino = 0.6 + SUBJECT_OFFSET[subject] + 0.1 * image_index
                    rows.append({**sample, "live": subject == "dog", "dino": dino, "clip_i": dino + 0.2,
                                 "clip_t": 0.3, "mem_dino": mem_dino, "mem_clip_i": mem_dino,
                                 "memorized": mem_dino > THRESHOLD})
            write_jsonl(folder / "samples.jsonl", samples)
    return pd.DataFrame(rows).drop(columns=["identifier", "model", "scheduler", "num_inference_steps"])


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")  # the figure tests keep theirs open; free them test by test


def load(results_dir: Path):
    return load_results(results_dir, memorization_threshold=THRESHOLD)


def photos(results) -> dict[str, list[Path]]:
    """Stand-ins for each subject's training photos: its samples of the first strategy, prompt 0."""
    samples = results.samples
    rows = samples[(samples["prompt_index"] == 0) & (samples["strategy"] == samples["strategy"].iloc[0])]
    return {subject: list(group["path"]) for subject, group in rows.groupby("subject")}


def report(results, out: Path) -> list[Path]:
    return write_report(results, out, photos=photos(results), settings=SETTINGS)


@pytest.fixture(scope="module")
def random_init_results(tmp_path_factory) -> Path:
    return make_results(tmp_path_factory.mktemp("random") / "results", pretrained=False)


@pytest.fixture(scope="module")
def results(random_init_results):
    return load(random_init_results)


@pytest.fixture(scope="module")
def paper(results, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("paper") / "paper"
    report(results, out)
    return out


def produced(out: Path) -> set[str]:
    return {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}


def table(paper: Path, name: str) -> str:
    return (paper / "tables" / f"{name}.tex").read_text()


def has_row(text: str, *cells: str) -> bool:
    """Whether a line of `text` is exactly these LaTeX cells."""
    return f"{' & '.join(cells)} \\\\" in text.splitlines()


def with_ci(mean: str, mark: str = "") -> str:
    return f"${mean}^{{+0.020}}_{{-0.010}}${mark}"


# ---- files and tables -------------------------------------------------------------------------------------

def test_every_file_is_produced_and_nothing_else(paper):
    assert produced(paper) == EXPECTED_FILES
    for png in paper.glob("figures/*.png"):
        with Image.open(png) as image:
            assert image.width > 100 and image.height > 100


def test_tables_are_booktabs_with_caption_and_label(paper):
    for tex in set(paper.glob("tables/*.tex")) - {paper / "tables" / "numbers.tex"}:
        text = tex.read_text()
        for rule in [r"\toprule", r"\midrule", r"\bottomrule", r"\caption{", r"\label{tab:"]:
            assert rule in text, f"{tex.name} lacks {rule}"


def test_main_table_shows_means_with_cis_and_marks_significance(paper):
    text = table(paper, "main")
    # none: (0.4 + 0.42 + 0.65 + 0.67) / 4 = 0.535; classic is 0.1 higher and its DINO alone is significant.
    assert has_row(text, "lora", "none", with_ci("0.535"), with_ci("0.735"), with_ci("0.300"), "12"), text
    assert has_row(text, "lora", "classic", with_ci("0.635", "*"), with_ci("0.835"), with_ci("0.300"), "12"), text
    assert "*: p \\textless{} 0.05 against 'none'" in text and "Wilcoxon signed-rank" in text


def test_main_table_has_the_real_images_upper_bound(paper):
    # mean over subjects of real_images.csv: (0.8 + 0.7) / 2, (0.9 + 0.85) / 2
    assert has_row(table(paper, "main"), "Real images (upper bound)", "--", "0.750", "0.875", "--", "--")


def test_published_numbers_stand_beside_ours_with_their_protocol(paper):
    text = table(paper, "main")
    assert r"\multicolumn{6}{l}{\emph{Published (other protocols: see caption)}}" in text
    assert has_row(text, r"DreamBooth (SD) \cite[Tab.~1]{ruiz2023dreambooth}", "--", "0.668", "0.803", "0.305", "--")
    assert has_row(text, r"IP-Adapter \cite[Tab.~2]{aiello2024dreamcache}", "--", "0.667", "0.813", "0.289", "--")
    assert has_row(text, r"DreamBooth (Imagen) \cite[Tab.~3]{ruiz2023dreambooth}", "without PPL", "0.712", "0.828",
                   "0.306", "--")
    caption = re.search(r"\\caption\{(.*)\}", text).group(1)
    for fact in ["DreamBooth, Table 1: 30 subjects; DreamBooth, Table 3: 15 subjects", "not CLIPScore (2.5 x cosine)",
                 "without the identifier token", "2 subjects x 3 prompts x 2 images per prompt",
                 f"{SD15}, ddim 50 steps;", "DINO dino\\_vits16", RANDOM_INIT_LABEL]:
        assert fact in caption, fact
    published = load_published()  # every row of REFERENCE.md's tables
    assert len(published) == 10 and published["dino"].notna().all()


def test_overfitting_table_has_div_pres_memorized_and_the_ppl_ablation(paper):
    text = table(paper, "overfitting")
    assert "Method & Strategy & DIV & PRES & PRES (base) & Memorized" in text
    # PRES base: dog's 0.45 (backpack has no class images); a quarter of the images memorized
    assert has_row(text, "lora", "none", with_ci("0.200"), with_ci("0.500"), "0.450", with_ci("0.250")), text
    # classic: PRES of dog only (backpack's run has no pres.jsonl)
    assert has_row(text, "lora", "classic", with_ci("0.300"), with_ci("0.400"), "0.450", with_ci("0.250")), text
    assert has_row(text, r"DreamBooth (Imagen) \cite[Tab.~3]{ruiz2023dreambooth}", "with PPL", "0.391", "0.493", "--",
                   "--"), text
    assert "exceeds 0.9" in text and "alex (random backbone)" in text
    assert "IP-Adapter" not in text  # no DIV or PRES published


def test_breakdown_table_by_prompt_kind_and_live(paper):
    text = table(paper, "breakdown")
    for title in ["Prompt kind: recontextualization", "Subject: live", "Subject: object"]:
        assert rf"\emph{{{title}}}" in text
    assert text.index("Prompt kind") < text.index("Subject: live") < text.index("Subject: object")
    # live = dog: dino 0.41 (none), 0.51 (classic); nothing of dog is memorized; object = backpack
    assert has_row(text, "lora", "none", "0.410", "0.610", "0.300", "0.000"), text
    assert has_row(text, "lora", "classic", "0.760", "0.960", "0.300", "0.500"), text


def test_per_subject_table_is_a_long_table_with_a_row_per_subject_and_run(paper):
    text = table(paper, "per_subject")
    assert r"\begin{longtable}" in text  # it breaks across pages: 30 subjects x every run fit
    # backpack, none: 0.4 + 0.25 + 0.01 = 0.660; classic: 0.760; escaped encoder name in the caption.
    assert has_row(text, "backpack", "backpack", "lora", "none", "0.660", "0.860", "0.300"), text
    assert has_row(text, "backpack", "backpack", "lora", "classic", "0.760", "0.960", "0.300"), text
    assert text.index("dog & dog & lora & none") < text.index("backpack & backpack")  # subjects in results' order
    assert r"dino\_vits16" in text


def test_runs_are_listed_baseline_first(tmp_path):
    results_dir = make_results(tmp_path / "results")
    edit_csv(metrics(results_dir, "per_subject.csv"), lambda t: t.sort_values(["strategy", "subject"]))
    results = load(results_dir)
    assert results.strategies == ["none", "classic"] and results.runs == [("lora", "none"), ("lora", "classic")]
    text = main_table(results)
    assert text.index("lora & none") < text.index("lora & classic")


@pytest.mark.parametrize("header_only", [False, True])
def test_no_tests_without_a_none_baseline(tmp_path, header_only):
    results_dir = make_results(tmp_path / "results", strategies=["classic", "scale"])
    if header_only:  # as the evaluate stage writes it: the columns, no rows
        metrics(results_dir, "tests.csv").write_text("method,strategy,baseline,metric,mean_diff,p_value,test,"
                                                     "n_subjects,significant,alpha,note\n")
    results = load(results_dir)
    assert results.tests.empty
    report(results, tmp_path / "paper")
    text = table(tmp_path / "paper", "main")
    assert "$*" not in text and "No significance tests" in text


def test_real_images_of_a_single_photo_subject_are_left_out(tmp_path):
    results_dir = make_results(tmp_path / "results")
    set_cell("real_images.csv", "dino", np.nan, row=1)(results_dir)  # backpack: one photo, no pair
    report(load(results_dir), tmp_path / "paper")
    assert has_row(table(tmp_path / "paper", "main"), "Real images (upper bound)", "--", "0.800", "0.875", "--", "--")


# ---- labels -------------------------------------------------------------------------------------------------

def figure_titles(results) -> list[str]:
    figures = [metrics_figure(results), dino_vs_clip_t_figure(results),
               samples_figure(results, "dog", photos(results)["dog"], 4), breakdown_figure(results),
               overfitting_figure(results), memorization_figure(results)]
    return [figure.get_suptitle() for figure in figures]


def test_random_init_label_in_every_caption(paper, results):
    for tex in paper.glob("tables/*.tex"):
        assert RANDOM_INIT_LABEL in tex.read_text(), tex.name
    for title in figure_titles(results):
        assert RANDOM_INIT_LABEL in title


def test_no_random_init_label_with_pretrained_encoders(tmp_path):
    results = load(make_results(tmp_path / "results", pretrained=True))
    report(results, tmp_path / "paper")
    for tex in (tmp_path / "paper").glob("tables/*.tex"):
        assert "random-init" not in tex.read_text().lower()
    for title in figure_titles(results):
        assert "random-init" not in title.lower()


@pytest.mark.parametrize("model", sorted(RANDOM_MODELS))
def test_random_model_label_names_the_model_in_every_caption(tmp_path, model):
    results = load(make_results(tmp_path / "results", pretrained=True, model=model))
    label = RANDOM_MODEL_LABEL.format(model=model)
    assert f"'{model}'" in label
    report(results, tmp_path / "paper")
    for tex in (tmp_path / "paper").glob("tables/*.tex"):
        assert escape_latex(label) in tex.read_text(), tex.name
    assert all(label in title for title in figure_titles(results))


def test_no_model_label_for_stable_diffusion(tmp_path):
    results = load(make_results(tmp_path / "results", pretrained=True))
    assert results.caption("Scores.") == "Scores."


def test_sampling_deviation_from_dreambench_is_labelled(tmp_path):
    """DreamBench samples with 50 DDIM steps; any other scheduler or step count is named in every caption."""
    dpm = {"scheduler": "dpm", "num_inference_steps": 25}
    results = load(make_results(tmp_path / "results", pretrained=True, sampling=dpm))
    label = "Sampling deviates from the DreamBench protocol (50 DDIM steps): dpm, 25 steps."
    assert results.caption("Scores.") == f"Scores. {label}"
    report(results, tmp_path / "paper")
    for tex in (tmp_path / "paper").glob("tables/*.tex"):
        assert escape_latex(label) in tex.read_text(), tex.name
    assert all(label in title for title in figure_titles(results))


def test_every_deviating_sampling_is_named_once(tmp_path):
    """Runs sampled differently (fewer DDIM steps for some): each deviating setting once, in order, not the protocol."""
    def few(strategy: str, subject: str) -> dict:
        return {"scheduler": "ddim", "num_inference_steps": 50 if strategy == "none" else 4}

    results = load(make_results(tmp_path / "results", pretrained=True, sampling=few))
    assert results.sampling == [("ddim", 50), ("ddim", 4)]
    assert results.caption("Scores.").endswith("(50 DDIM steps): ddim, 4 steps.")


def test_no_deviation_label_with_50_ddim_steps(tmp_path):
    results = load(make_results(tmp_path / "results", pretrained=True))
    assert results.sampling == [("ddim", 50)]
    report(results, tmp_path / "paper")
    for tex in (tmp_path / "paper").glob("tables/*.tex"):
        assert "deviates" not in tex.read_text(), tex.name
    assert not any("deviates" in title for title in figure_titles(results))


def test_captions_state_the_recorded_confidence_and_alpha(tmp_path):
    """The levels come from stats.csv and tests.csv (the gather's eval.confidence, eval.alpha), not a 95% / 0.05
    written into the report."""
    results = load(make_results(tmp_path / "results", confidence=0.9, alpha=0.01))
    report(results, tmp_path / "paper")
    write_ablation_report(results, tmp_path / "ablation")
    for text in [table(tmp_path / "paper", "main"), table(tmp_path / "paper", "overfitting"),
                 (tmp_path / "ablation" / "ablation.tex").read_text()]:  # the tables with CIs and tests
        assert r"90\% CI" in text and r"*: p \textless{} 0.01 against" in text
    for tex in tmp_path.rglob("*.tex"):
        assert r"95\%" not in tex.read_text() and r"p \textless{} 0.05" not in tex.read_text(), tex.name
    interval_figures = [metrics_figure(results), overfitting_figure(results), strength_figure(results)]
    assert all("90% CI" in figure.get_suptitle() for figure in interval_figures)
    assert not any("95%" in title for title in figure_titles(results))


# ---- figures ------------------------------------------------------------------------------------------------

def bars_and_intervals(ax) -> tuple[list[float], list[tuple[float, float]]]:
    """Heights of an `interval_bars` panel, and the (low, high) of its error bars, strategy by strategy."""
    heights = [round(bar.get_height(), 6) for bar in ax.patches]
    intervals = []
    for container in ax.containers:
        if hasattr(container, "has_yerr"):  # an ErrorbarContainer: its vertical segments
            intervals += [tuple(np.round(segment[:, 1], 6)) for segment in container.lines[2][0].get_segments()]
    return heights, intervals


def test_metric_bars_are_the_stats_means_with_their_cis(results):
    dino_panel = metrics_figure(results).axes[0]
    assert dino_panel.get_title() == "DINO"
    heights, intervals = bars_and_intervals(dino_panel)
    assert heights == [0.535, 0.635]  # none, classic
    assert intervals == [(0.525, 0.555), (0.625, 0.655)]


def test_overfitting_figure_shows_div_pres_with_the_base_model_and_memorized(results):
    div, pres, memorized = overfitting_figure(results).axes[:3]
    assert bars_and_intervals(div)[0] == [0.2, 0.3]
    assert bars_and_intervals(memorized)[0] == [0.25, 0.25]
    assert bars_and_intervals(pres)[0] == [0.5, 0.4]
    ticks = pres.collections[-1]  # the base model's PRES on each bar
    assert np.allclose(ticks.get_offsets()[:, 1], [0.45, 0.45])


def test_memorization_histogram_has_the_threshold_line(results):
    figure = memorization_figure(results)
    (ax,) = figure.axes
    assert ax.get_title() == "lora"
    verticals = [line.get_xdata() for line in ax.lines]
    assert [list(x) for x in verticals] == [[THRESHOLD, THRESHOLD]]
    assert "threshold 0.9" in figure.get_suptitle()
    low, high = ax.get_xlim()
    assert low <= 0.6 and high >= 0.95  # every mem_dino is on the axis


def test_breakdown_figure_bars_are_the_group_means(results):
    figure = breakdown_figure(results)
    dino = next(ax for ax in figure.axes if ax.get_title() == "lora: DINO")
    labels = [tick.get_text() for tick in dino.get_xticklabels()]
    assert labels == ["recontextualization", "live", "object"]
    heights = [round(bar.get_height(), 6) for bar in dino.patches if bar.get_height() > 0]
    # none: recontextualization 0.535, live 0.41, object 0.66; classic: each 0.1 higher
    assert heights == [0.535, 0.41, 0.66, 0.635, 0.51, 0.76]


def test_sample_grid_shows_the_training_photos_first_then_a_row_per_run(results):
    figure = samples_figure(results, "backpack", photos(results)["backpack"], n_prompts=2)
    axes = np.array(figure.axes).reshape(2, 3)
    titles = [ax.get_title().replace("\n", " ") for ax in axes[0]]  # long prompts are wrapped
    assert titles == ["training photos", "a sks backpack in the jungle", "a sks backpack in the snow"]
    assert [ax.get_ylabel() for ax in axes[:, -1]] == ["lora\nnone", "lora\nclassic"]
    assert tuple(axes[1, 0].get_images()[0].get_array()[0, 0]) == (0, 100, 200)  # photo 1: none, prompt 0, image 1
    assert tuple(axes[1, 2].get_images()[0].get_array()[0, 0]) == (40, 0, 50)  # classic, prompt 1, image 0


def test_a_subject_without_photos_is_named(results):
    with pytest.raises(ResultsError, match="'dog': no training photo"):
        samples_figure(results, "dog", [], 2)


# ---- what paper/main.tex reads -------------------------------------------------------------------------------

def result(paper: Path, key: str) -> str:
    """The value numbers.tex gives `key`."""
    text = (paper / "tables" / "numbers.tex").read_text()
    return re.search(r"\\csname result@" + re.escape(key) + r"\\endcsname\{(.*)\}$", text, re.MULTILINE).group(1)


def test_numbers_of_the_text_are_the_tables(paper):
    # dino = strategy base + subject offset (0, 0.25) + 0.02 x image index (0, 1): none 0.535, classic 0.635
    assert result(paper, "main/dino/lora/none") == "0.535" and result(paper, "main/dino/lora/classic") == "0.635"
    assert result(paper, "main/best/dino") == "0.635" and result(paper, "main/best/dino/run") == "lora / classic"
    assert result(paper, "main/best/pres") == "0.400"  # lower is better: classic's 0.4 (backpack's is NaN)
    assert result(paper, "main/change/dino/min") == result(paper, "main/change/dino/max") == "$+0.100$"
    assert (result(paper, "main/significant"), result(paper, "main/tests")) == ("1", "6")  # dino's p 0.01
    assert result(paper, "main/subjects") == "2" and result(paper, "main/images") == str(2 * 2 * 3 * 2)
    assert result(paper, "main/real/dino") == "0.750" and RANDOM_INIT_LABEL in result(paper, "main/labels")
    assert "0.635" in table(paper, "main")  # the same number in the table


def test_settings_table_prints_each_methods_params(paper):
    text = table(paper, "settings")
    assert has_row(text, "lora", "500", "0.0001", "1", "no", "rank 8, alpha 4, train text encoder no")
    assert "200 class images per class" in text and "strength 0.5" in text


def test_published_rows_cite_their_paper_and_table(paper):
    bib = (REPO / "paper" / "references.bib").read_text()
    published = load_published()
    for row in published.itertuples():
        assert re.search(r"@\w+\{" + row.bibkey + ",", bib), row.bibkey
        assert rf"{escape_latex(row.method)} \cite[Tab.~{row.table}]{{{row.bibkey}}}" in table(paper, "main")


# ---- determinism, atomic writes, inputs -----------------------------------------------------------------------

def test_two_runs_give_identical_files(paper, random_init_results, tmp_path):
    again = tmp_path / "paper"
    report(load(random_init_results), again)
    for name in sorted(EXPECTED_FILES):
        assert (again / name).read_bytes() == (paper / name).read_bytes(), name
    for pdf in again.glob("figures/*.pdf"):  # runs a second apart would differ by it
        assert b"/CreationDate" not in pdf.read_bytes()


def test_failed_report_leaves_previous_output(random_init_results, tmp_path, monkeypatch):
    out = tmp_path / "paper"
    report(load(random_init_results), out)
    before = {name: (out / name).read_bytes() for name in EXPECTED_FILES}

    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr("dreamstudy.report.figures.samples_figure", broken)
    with pytest.raises(RuntimeError, match="drawing failed"):
        report(load(random_init_results), out)
    assert produced(out) == EXPECTED_FILES  # no half-written files, no temporary folders
    assert {name: (out / name).read_bytes() for name in EXPECTED_FILES} == before


def edit_csv(path: Path, change) -> None:
    change(pd.read_csv(path)).to_csv(path, index=False)


def metrics(root: Path, name: str) -> Path:
    return root / "metrics" / name


def set_cell(name: str, column: str, value, row: int = 0):
    def damage(root: Path) -> None:
        def change(frame):
            frame[column] = frame[column].astype(object)
            frame.loc[row, column] = value
            return frame
        edit_csv(metrics(root, name), change)
    return damage


def set_sample(key: str, value=None):
    """Row 2 of lora/none/dog's samples.jsonl with `key` set to `value`, or without it (None)."""
    def damage(root: Path) -> None:
        index = root / "samples" / "lora" / "none" / "dog" / "samples.jsonl"
        rows = read_jsonl(index)
        rows[1].pop(key) if value is None else rows[1].update({key: value})
        write_jsonl(index, rows)
    return damage


@pytest.mark.parametrize("damage, named", [
    (lambda r: metrics(r, "per_image.csv").unlink(), "per_image.csv"),
    (lambda r: metrics(r, "stats.csv").unlink(), "stats.csv"),
    (lambda r: metrics(r, "real_images.csv").unlink(), "real_images.csv"),
    (lambda r: metrics(r, "breakdown.csv").unlink(), "breakdown.csv"),
    (lambda r: metrics(r, "tests.csv").unlink(), "tests.csv"),  # the grid has `none`: tests are due
    (lambda r: metrics(r, "encoders.json").write_text(json.dumps({"pretrained": "no"})), "encoders.json"),
    (lambda r: (r / "samples" / "lora" / "classic" / "dog" / "01_1.png").unlink(), "01_1.png"),
    (lambda r: (r / "samples" / "lora" / "none" / "backpack" / "samples.jsonl").unlink(), "samples.jsonl"),
    (set_sample("scheduler"), "dog/samples.jsonl: row 2 lacks ['scheduler']"),  # sampled before it was recorded
    (set_sample("num_inference_steps"), "dog/samples.jsonl: row 2 lacks ['num_inference_steps']"),
    (set_sample("num_inference_steps", "50"), "dog/samples.jsonl: row 2: expected a scheduler name"),
    (lambda r: edit_csv(metrics(r, "per_subject.csv"), lambda t: t.drop(columns="clip_t")), "per_subject.csv"),
    (lambda r: edit_csv(metrics(r, "per_subject.csv"), lambda t: t.drop(columns="pres_base")), "per_subject.csv"),
    (set_cell("per_subject.csv", "dino", np.nan), "per_subject.csv"),   # only div and pres may be NaN
    (set_cell("per_subject.csv", "div", "abc"), "per_subject.csv"),     # NaN may be empty, not text
    (set_cell("stats.csv", "mean", np.nan), "stats.csv"),               # row 0 is dino's
    (set_cell("stats.csv", "ci_low", "abc"), "stats.csv"),
    (lambda r: edit_csv(metrics(r, "stats.csv"), lambda t: t[t["metric"] != "pres"]), "stats.csv"),
    (lambda r: edit_csv(metrics(r, "real_images.csv"), lambda t: t.iloc[:1]), "real_images.csv"),
    (set_cell("per_image.csv", "memorized", True), "eval.memorization_threshold"),  # scored under another one
    (lambda r: edit_csv(metrics(r, "stats.csv"), lambda t: t.drop(columns="confidence")),
     "stats.csv: missing column(s) ['confidence']"),
    (set_cell("stats.csv", "confidence", 0.9), "stats.csv: `confidence`"),  # not one level for all intervals
    (lambda r: edit_csv(metrics(r, "stats.csv"), lambda t: t.assign(confidence=95)), "stats.csv: `confidence`"),
    (lambda r: edit_csv(metrics(r, "tests.csv"), lambda t: t.drop(columns="alpha")),
     "tests.csv: missing column(s) ['alpha']"),
    (set_cell("tests.csv", "alpha", 0.01), "tests.csv: `alpha`"),
])
def test_bad_input_names_the_file(tmp_path, damage, named):
    results_dir = make_results(tmp_path / "results")
    damage(results_dir)
    with pytest.raises(ResultsError, match=re.escape(named)):
        load(results_dir)


def test_stage_writes_paper_from_results(random_init_results, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("report_stage", REPO / "stages" / "report.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    shutil.copytree(random_init_results, tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    subjects = {name: SimpleNamespace(images=images) for name, images in photos(load(tmp_path / "results")).items()}
    monkeypatch.setattr(stage, "load_dataset", lambda folder: SimpleNamespace(subjects=subjects))
    stage.main(["--params", str(REPO / "params.smoke.yaml")])
    assert produced(tmp_path / "paper") == EXPECTED_FILES


ABLATION_LABELS = ["none", "classic@0.5", "classic@1.0", "scale@0.5", "scale@1.0"]


@pytest.fixture
def ablation_results(tmp_path):
    """An ablation's results/: synthetic DINO 0.3 + 0.05 x the label's position (none: 0.4), so that its mean
    over subjects is none 0.535, classic@0.5 0.485 ... scale@1.0 0.635; only scale@1.0 differs from none
    significantly (on DINO)."""
    root = make_results(tmp_path / "results", strategies=ABLATION_LABELS)
    pd.DataFrame([{"method": "lora", "strategy": label, "baseline": "none", "metric": metric, "mean_diff": 0.1,
                   "p_value": 0.01 if (label, metric) == ("scale@1.0", "dino") else 0.5, "test": "wilcoxon",
                   "n_subjects": 2, "significant": (label, metric) == ("scale@1.0", "dino"), "alpha": ALPHA}
                  for label in ABLATION_LABELS[1:] for metric in STAT_METRICS]).to_csv(
        root / "metrics" / "tests.csv", index=False)
    return load(root)


def test_ablation_report(ablation_results, tmp_path):
    written = write_ablation_report(ablation_results, tmp_path / "paper")
    assert {p.name for p in written} == {"ablation.tex", "numbers.tex", "plane.pdf", "plane.png", "strength.pdf",
                                         "strength.png"}
    tex = (tmp_path / "paper" / "ablation.tex").read_text()
    cell = r"\$%s\^\{\+0\.020\}_\{-0\.010\}\$"  # stats.csv's mean and CI
    assert re.search(r"^none & -- & " + cell % r"0\.535" + " & ", tex, re.MULTILINE), tex  # the baseline first
    assert re.search(r"^classic & 0\.5 & " + cell % r"0\.485" + " & ", tex, re.MULTILINE), tex
    assert re.search(r"^scale & 1 & " + cell % r"0\.635" + r"\* & ", tex, re.MULTILINE), tex  # against none
    rows = [line for line in tex.splitlines() if line.startswith(("none &", "classic &", "scale &"))]
    assert len(rows) == 5 and sum(row.count("*") for row in rows) == 1  # no other mark
    assert all(label in tex for label in STAT_METRICS.values())
    numbers = (tmp_path / "paper" / "numbers.tex").read_text()  # what the paper's text prints of the ablation
    for key, value in {"ablation/best/dino": "0.635", "ablation/best/dino/run": "lora / scale@1.0",
                       "ablation/method": "lora", "ablation/significant": "1", "ablation/tests": "24"}.items():
        assert rf"\csname result@{key}\endcsname{{{value}}}" in numbers, key


def test_ablation_strength_figure_draws_stats_and_the_baseline(ablation_results):
    figure = strength_figure(ablation_results)
    dino = figure.axes[0]
    lines = {line.get_label(): list(line.get_ydata()) for line in dino.get_lines()}
    assert lines["none (original images)"] == pytest.approx([0.535, 0.535])
    assert lines["classic"] == pytest.approx([0.485, 0.535]) and lines["scale"] == pytest.approx([0.585, 0.635])
    assert [ax.get_title() for ax in figure.axes] == list(STAT_METRICS.values())


def test_a_single_value_has_no_interval(tmp_path):
    """stats.csv leaves the CI empty where there was nothing to resample (one subject's PRES): the table
    shows the mean alone, not an interval of width 0."""
    root = make_results(tmp_path / "results")
    edit_csv(metrics(root, "stats.csv"), lambda t: t.assign(
        ci_low=t["ci_low"].mask(t["metric"] == "dino"), ci_high=t["ci_high"].mask(t["metric"] == "dino")))
    tex = main_table(load(root))
    assert re.search(r"^lora & none & 0\.535 & \$0\.735\^", tex, re.MULTILINE), tex


def test_multi_sample_grid_shows_both_subjects_photos_first(tmp_path):
    colours = {"dog": (250, 0, 0), "backpack": (0, 250, 0)}
    photos = {}
    for subject, colour in colours.items():
        photos[subject] = [tmp_path / f"{subject}.png"]
        Image.new("RGB", (8, 8), colour).save(photos[subject][0])
    rows = []
    for variant in ("lora_joint", "lora_sum", "edlora_fusion"):
        folder = tmp_path / "samples" / variant / "none" / "dog+backpack"
        folder.mkdir(parents=True)
        for prompt_index in range(2):
            Image.new("RGB", (8, 8), (0, 0, 100 * prompt_index)).save(folder / f"p{prompt_index}.png")
            rows.append({"variant": variant, "pair": "dog+backpack", "prompt_index": prompt_index, "image_index": 0,
                         "prompt": f"prompt {prompt_index}", "file": f"p{prompt_index}.png"})
    sample_grids(pd.DataFrame(rows), tmp_path / "samples", photos, tmp_path)
    assert not plt.get_fignums()  # each grid is saved and closed
    with Image.open(tmp_path / "samples_dog+backpack.png") as grid:
        pixels = np.asarray(grid.convert("RGB")).reshape(-1, 3)
    for colour in colours.values():  # both subjects' photos are drawn
        assert (np.abs(pixels.astype(int) - colour).sum(axis=1) < 30).any(), colour
