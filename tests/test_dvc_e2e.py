"""The smoke study end to end through DVC, in a temporary copy of the repository.

One module-scoped run (minutes) serves every check: all stages run and produce every figure and table;
a second `dvc repro` reruns nothing; each change of params or code reruns exactly the stages that read it
(seen in `dvc status` once the cheap `stage_inputs` has run); `dvc exp run -S aug.strength=0.5` reruns
exactly `augment` and the stages after it that its outputs change, and the experiment keeps its metrics
and loss curves.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from dreamstudy import dag
from dreamstudy.params import METHODS

ROOT = Path(__file__).resolve().parents[1]
SMOKE_TRAIN = yaml.safe_load((ROOT / "params.smoke.yaml").read_text())["train"]
GRID_METHODS, BASELINE_METHODS = SMOKE_TRAIN["methods"], SMOKE_TRAIN["baseline_methods"]  # the smoke's
GIT_ENV = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}

pytestmark = pytest.mark.slow
LATEX = bool(shutil.which("latexmk") and shutil.which("pdflatex"))
needs_latex = pytest.mark.skipif(not LATEX, reason="LaTeX is not installed (make install-latex)")
REPORTS = ["report", "report_ablation", "report_multi"]  # every stage but the paper is upstream of one of them
TARGETS = [] if LATEX else REPORTS  # what `make smoke-dag` reproduces: without LaTeX, all but the paper


def env(repo: Path) -> dict:
    """The stages import the package of `repo`, not of the checkout that pip installed in editable mode."""
    return {**os.environ, **GIT_ENV, "PYTHONPATH": str(repo / "src")}


def run(cmd: list[str], cwd: Path, stdout_only: bool = False) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env(cwd))
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout if stdout_only else done.stdout + done.stderr


def stages_run(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", log))


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A clean clone of the working tree (its files as they are, committed in a fresh git repo)."""
    dest = tmp_path_factory.mktemp("study")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "clone"], dest)
    return dest


@pytest.fixture(scope="module")
def smoke(clone) -> tuple[Path, str]:
    return clone, run(["make", "smoke-dag"], clone)


def test_every_stage_runs_and_every_output_exists(smoke):
    repo, log = smoke
    ran = stages_run(log)
    assert {"stage_inputs", "fetch_data", "gather", "report"} <= ran
    for stage in ("augment", "train", "sample", "evaluate"):
        assert {f"{stage}@dog-none", f"{stage}@backpack-classic"} <= {s.replace("-lora", "") for s in ran}
    summary = json.loads((repo / "results/metrics/summary.json").read_text())
    assert set(summary) - {"real_images"} == {*GRID_METHODS, *BASELINE_METHODS}
    assert set(summary["lora"]) == {"none", "classic"}
    for name in ("dino", "clip_i", "clip_t"):
        assert -1 <= summary["lora"]["classic"][name] <= 1
    figures = {p.name for p in (repo / "paper/figures").iterdir()}
    assert any(n.endswith(".pdf") for n in figures) and any(n.endswith(".png") for n in figures)
    tables = list((repo / "paper/tables").glob("*.tex"))
    assert tables and all("random" in t.read_text().lower() for t in tables)
    assert (repo / "models/lora/classic/dog/pytorch_lora_weights.safetensors").is_file()
    assert (repo / "results/samples/lora/none/backpack/samples.jsonl").is_file()
    # the multi-concept study: one pair, joint, merged and Mix-of-Show (fused ED-LoRAs), the last with and
    # without regions
    assert {"train_multi@pair0-lora", "merge_multi_lora@pair0-sum", "merge_multi_edlora@pair0-fusion",
            "sample_multi_regions@pair0-edlora_fusion", "evaluate_multi_joint@pair0-lora", "gather_multi",
            "report_multi"} <= ran
    assert set(json.loads((repo / "results/multi/metrics/summary.json").read_text())) == {
        "lora_joint", "lora_sum", "edlora_fusion", "edlora_fusion@regions"}
    assert (repo / "models/multi/edlora_fusion/none/dog+backpack/fused_weights.safetensors").is_file()
    # retention: each subject alone from every plain variant, against its single-concept model
    retention = pd.read_csv(repo / "results/multi/metrics/retention.csv")
    assert set(retention.variant) == {"lora_joint", "lora_sum", "edlora_fusion"}
    assert set(retention.metric) == {"dino", "clip_i", "clip_t"} and retention["mean_diff"].notna().all()
    assert "Retention" in (repo / "paper/multi/retention.tex").read_text()
    assert "random" in (repo / "paper/multi/table.tex").read_text().lower()
    crops = (repo / "paper/multi/crops.tex").read_text()
    assert "Identity mixing" in crops and "OWLv2 base/16 (random init), 128 px" in crops
    assert (repo / "paper/multi/samples_dog+backpack.png").is_file()


def pdf_text(pdf: Path, page: int | None = None) -> str:
    """pdftotext's text of `pdf` (or of one page), math minus signs as hyphens, whitespace single, and words
    that LaTeX hyphenated at a line's end joined again."""
    pages = ["-f", str(page), "-l", str(page)] if page else []
    text = subprocess.run(["pdftotext", *pages, "-layout", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    return re.sub(r"-\s+", "-", " ".join(text.replace("\u2212", "-").split()))


@needs_latex
def test_the_paper_compiles_without_undefined_references_or_overfull_boxes(smoke):
    repo, log = smoke
    assert "paper" in stages_run(log) and (repo / "paper/main.pdf").read_bytes().startswith(b"%PDF")
    # the stage fails on a LaTeX error or an undefined reference or citation, and names wider boxes
    assert "wider than the text" not in log


@needs_latex
def test_the_paper_prints_every_headline_number_and_the_random_weights_label(smoke):
    repo, _ = smoke
    text = pdf_text(repo / "paper/main.pdf")
    summary = json.loads((repo / "results/metrics/summary.json").read_text())
    for metric, value in summary.pop("real_images").items():  # the upper bound, in the table and the prose
        assert f"{value:.3f}" in text, ("real_images", metric)
    for method, strategies in summary.items():
        for strategy, means in strategies.items():
            for metric in ("dino", "clip_i", "clip_t"):
                assert f"{means[metric]:.3f}" in text, (method, strategy, metric)
    best = max(means["dino"] for strategies in summary.values() for means in strategies.values())
    assert f"The best DINO is {best:.3f}" in text  # the prose's macro, not only the table
    assert "Random-init encoders: numbers are not comparable to published ones." in text
    assert "What these numbers are. Random-init encoders" in text  # on the title page


@needs_latex
def test_a_figure_page_of_the_paper_is_not_blank(smoke, tmp_path):
    repo, _ = smoke
    pdf = repo / "paper/main.pdf"
    pages = int(re.search(r"Pages:\s+(\d+)", run(["pdfinfo", str(pdf)], repo)).group(1))
    page = next(n for n in range(1, pages + 1) if "DreamBench scores per method and strategy, with their intervals"
                in pdf_text(pdf, n))
    subprocess.run(["pdftoppm", "-f", str(page), "-l", str(page), "-r", "40", "-png", str(pdf), str(tmp_path / "p")],
                   check=True)
    with Image.open(next(tmp_path.glob("p*.png"))) as image:
        grey = np.asarray(image.convert("L"))
    assert (grey < 200).mean() > 0.05 and grey.std() > 20  # drawn, not an empty page with a caption


def test_git_sees_the_metric_and_plot_files_and_no_other_output(smoke):
    repo, _ = smoke
    untracked = run(["git", "status", "--porcelain", "--untracked-files=all"], repo).split("\n")
    paths = {line[3:] for line in untracked if line}
    curves = {str(p.relative_to(repo)) for p in repo.glob("results/**/train/**/loss.tsv")}
    headlines = {f"results/{study}metrics/headline.json" for study in ("", "ablation/", "multi/")}
    assert curves and paths == {"dvc.lock", "params.yaml", *headlines, *curves}


def test_second_repro_reruns_nothing(smoke):
    repo, _ = smoke
    assert stages_run(run(["dvc", "repro", *TARGETS], repo)) == set()


def changed_by(repo: Path, path: str, change, prior_sets: bool = False) -> set[str]:
    """The stages DVC would rerun after `change` rewrites the text of `path`, once `stage_inputs` (and, with
    `prior_sets`, the prior sets it feeds: both cheap) have run; the workspace is then put back as it was."""
    original, lock = (repo / path).read_text(), (repo / "dvc.lock").read_text()
    (repo / path).write_text(change(original))
    try:
        run(["dvc", "repro", "--single-item", "stage_inputs"], repo)
        changed = set(json.loads(run(["dvc", "status", "--json"], repo, stdout_only=True)))
        rerun = [stage for stage in changed if stage.startswith("prior_set")] if prior_sets else []
        if rerun:
            run(["dvc", "repro", "--single-item", *rerun], repo)
            changed = set(json.loads(run(["dvc", "status", "--json"], repo, stdout_only=True))) | set(rerun)
        return changed
    finally:
        (repo / path).write_text(original)
        (repo / "dvc.lock").write_text(lock)
        run(["dvc", "checkout", "--force"], repo)


def with_params(repo: Path, prior_sets: bool = False, **changes) -> set[str]:
    def change(text: str) -> str:
        params = yaml.safe_load(text)
        for key, value in changes.items():
            *sections, leaf = key.split(".")
            node = params
            for section in sections:
                node = node[section]
            node[leaf] = value
        return yaml.safe_dump(params)
    return changed_by(repo, "params.yaml", change, prior_sets)


def with_edit(repo: Path, path: str) -> set[str]:
    return changed_by(repo, path, lambda text: text + "# edited\n")


def grid(stage: str, subjects=("dog", "backpack"), methods=None, strategies=("none", "classic")) -> set[str]:
    """The `stage` stages of `methods` (default: the smoke's); baseline methods' on `none` only."""
    methods = [*GRID_METHODS, *BASELINE_METHODS] if methods is None else methods
    on_grid = [m for m in methods if m not in BASELINE_METHODS]
    baseline = [m for m in methods if m in BASELINE_METHODS] if "none" in strategies else []
    return {*(f"{stage}@{subject}-{method}-{strategy}" for subject in subjects for method in on_grid
              for strategy in strategies),
            *(f"{stage}_baseline@{subject}-{method}-none" for subject in subjects for method in baseline)}


def test_a_new_subject_runs_its_own_stages_then_the_gather(smoke):
    repo, _ = smoke
    changed = with_params(repo, **{"data.subjects": ["dog", "backpack", "can"]})
    assert changed == {"class_priors@can", "gather", *(f"prior_set@can-{m}" for m in GRID_METHODS),
                       *(f"prior_set_baseline@can-{m}" for m in BASELINE_METHODS),
                       *(f"augment@can-{s}" for s in ("none", "classic")),
                       *(s for stage in ("train", "sample", "evaluate") for s in grid(stage, subjects=["can"]))}


def test_the_prior_weight_reruns_only_methods_with_prior_preservation(smoke):
    repo, _ = smoke
    preserving = [m for m in METHODS if yaml.safe_load((repo / "params.yaml").read_text())["train"][m][
        "prior_preservation"]]
    assert preserving and len(preserving) < len(METHODS)
    changed = with_params(repo, prior_sets=True, **{"priors.weight": 0.5})
    assert changed == {*(f"prior_set@{s}-{m}" for s in ("dog", "backpack") for m in preserving),
                       *grid("train", methods=preserving), "report"}  # the paper's settings table prints it


def test_one_subjects_identifier_reruns_that_subjects_stages_only(smoke):
    repo, _ = smoke
    changed = with_params(repo, **{"train.identifiers.dog": "ohwx"})
    main = {"augment@dog-none", "augment@dog-classic", *grid("train", subjects=["dog"]),
            *grid("sample", subjects=["dog"])}
    assert main <= changed
    # the ablation's dog stages, and the multi-concept study's of the pair with dog (the smoke's pair0)
    assert all(re.match(r"(augment|train|sample)_ablation(_none)?@dog\b|(train|sample)_multi\w*@pair0-", stage)
               for stage in changed - main)


def test_the_strength_reruns_only_graded_augmentations(smoke):
    repo, _ = smoke
    assert with_params(repo, **{"aug.strength": 0.5}) == {"augment@dog-classic", "augment@backpack-classic",
                                                          "report"}  # the paper's settings table prints it


def test_settings_that_leave_outputs_unchanged_rerun_nothing(smoke):
    repo, _ = smoke
    assert with_params(repo, **{"train.checkpoint_every.lora": 7}) == set()


def test_a_method_module_reruns_only_that_method(smoke):
    repo, _ = smoke
    changed = with_edit(repo, "src/dreamstudy/methods/textual_inversion.py")
    assert changed == grid("train", methods=["textual_inversion"]) | grid("sample", methods=["textual_inversion"])


def test_a_shared_module_reruns_every_stage_that_imports_it(smoke):
    repo, _ = smoke
    importers = {path.parent.name + "/" + path.stem for path in (repo / "build/stage_inputs").glob("*/*.json")
                 if "src/dreamstudy/text.py" in json.loads(path.read_text())["code"]}
    assert {"main/train-lora", "main/evaluate", "ablation/train-lora"} <= importers
    assert not importers & {"main/fetch_data", "main/report", "main/gather"}
    present = {kind_of(stage) for stage in run(["dvc", "stage", "list", "--name-only"], repo, stdout_only=True).split()
               if stage != "stage_inputs"}
    changed = with_edit(repo, "src/dreamstudy/text.py")
    assert {kind_of(stage) for stage in changed} == importers & present


def kind_of(stage: str) -> str:
    """"train_ablation@dog-classic-0.5" -> "ablation/train-lora": the inputs file a stage depends on (the smoke
    ablation's method is lora); "merge_multi_lora@pair0-sum" -> "multi/merge_multi-lora_sum"."""
    name, _, cell = stage.partition("@")
    if "_multi" in name:
        kind, _, source = name.partition("_multi")
        if dag.KINDS[f"{kind}_multi"].by is None:
            return f"multi/{kind}_multi"
        item = cell.split("-", 1)[1]
        source = source.removeprefix("_")
        variant = {"": f"{item}_joint", "joint": f"{item}_joint", "regions": f"{item}@regions"}.get(
            source, f"{source}_{item}")
        return f"multi/{kind}_multi-{variant}"
    kind, study = (name.removesuffix("_ablation_none").removesuffix("_ablation").removesuffix("_baseline"),
                   "ablation" if "_ablation" in name else "main")
    by = dag.KINDS[kind].by
    if by is None:
        return f"{study}/{kind}"
    if name.endswith("_none") and by == "strategy":
        item = "none"
    elif study == "ablation" and by == "method":
        item = "lora"
    else:
        item = cell.split("-")[1]
    return f"{study}/{kind}-{item}"


def test_strength_experiment_reruns_augment_and_after(smoke):
    repo, _ = smoke
    before = json.loads((repo / "results/metrics/summary.json").read_text())
    # the experiments stop at the reports: the smoke run compiled the paper once, which is enough (test time)
    ran = stages_run(run(["dvc", "exp", "run", "-n", "s05", "-S", "aug.strength=0.5", *REPORTS], repo))
    assert "fetch_data" not in ran
    assert {s for s in ran if s.startswith("augment")} == {"augment@dog-classic", "augment@backpack-classic"}
    # `none` ignores the strength: its outputs are unchanged, so nothing downstream of it reruns
    assert {s for s in ran if s.startswith(("train@", "sample@", "evaluate@"))} == {
        s for stage in ("train", "sample", "evaluate") for s in grid(stage, strategies=["classic"])}
    assert {"gather", "report"} <= ran and not {s for s in ran if "ablation" in s}
    after = json.loads((repo / "results/metrics/summary.json").read_text())
    assert after["lora"]["classic"] != before["lora"]["classic"]
    assert after["lora"]["none"] == before["lora"]["none"]
    # the experiment keeps its numbers and its loss curves
    table = run(["dvc", "exp", "show", "--csv"], repo, stdout_only=True)
    row = next(line for line in table.splitlines() if line.startswith("s05,"))
    headline = json.loads((repo / "results/metrics/headline.json").read_text())
    assert str(headline["lora"]["classic"]["dino"]) in row.split(",")
    plots = run(["dvc", "plots", "diff", "s05", "--json"], repo, stdout_only=True)
    assert "loss.tsv" in plots and "s05" in plots


def test_sigkilled_training_resumes_to_the_same_weights(smoke):
    repo, _ = smoke
    weights = repo / "models/lora/none/dog/pytorch_lora_weights.safetensors"
    uninterrupted = hashlib.sha256(weights.read_bytes()).hexdigest()
    stage = subprocess.Popen(["dvc", "repro", "--force", "--single-item", "train@dog-lora-none"], cwd=repo,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(repo))
    checkpoint = repo / "checkpoints/lora/none/dog/state.json"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    trainer = subprocess.run(["pgrep", "-f", "stages/train.py --subject dog --method lora --strategy none"],
                             capture_output=True, text=True).stdout.split()
    assert checkpoint.exists() and trainer, "the training stage finished before it could be killed"
    for pid in trainer:
        os.kill(int(pid), signal.SIGKILL)
    assert stage.wait() != 0 and not weights.exists()
    # --force: dvc.lock and the DVC cache still hold the smoke run's outputs, which a plain repro would
    # check out; a first run killed this way has neither, and `dvc repro` runs it, as --force does here
    log = run(["dvc", "repro", "--force", "--single-item", "train@dog-lora-none"], repo)
    assert "resuming from the checkpoint at step" in log
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == uninterrupted


def test_changing_one_strength_reruns_only_its_column(smoke):
    repo, log = smoke
    assert {"gather_ablation", "report_ablation", "train_ablation_none@dog"} <= stages_run(log)
    assert re.search(r"^none & -- & ", (repo / "paper/ablation/ablation.tex").read_text(), re.MULTILINE)
    ran = stages_run(run(["dvc", "exp", "run", "-S", "ablation.strengths=[0.5,0.75]", *REPORTS], repo))
    cells = {s for s in ran if s.startswith(("augment_ablation@", "train_ablation@", "sample_ablation@",
                                              "evaluate_ablation@"))}
    assert cells == {f"{stage}_ablation@dog-{strategy}-0.75" for stage in ("augment", "train", "sample", "evaluate")
                     for strategy in ("classic",)}  # the smoke ablation's one strategy
    assert {"gather_ablation", "report_ablation"} <= ran
    assert not ran & {"fetch_data", "class_priors@dog", "gather", "report"}
    assert not {s for s in ran if "_ablation_none@" in s}  # the baseline has no strength
