"""dvc.yaml against the code: each stage depends on its inputs file and writes where the layout says; the
inputs files hold exactly the params keys a stage may read and the files it executes."""

import ast
import shutil
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo

from dreamstudy import dag, grid
from dreamstudy.layout import BASELINE, STUDIES, Layout, key_subjects, strategy_label
from dreamstudy.params import MERGES, METHODS, MULTI_VARIANTS, STRATEGIES, ParamsError, load_params, validate_params
from tests.helpers import ROOT

SRC = ROOT / "src" / "dreamstudy"


def smoke_params(**changes) -> dict:
    raw = yaml.safe_load((ROOT / "params.smoke.yaml").read_text())
    for key, value in changes.items():
        section, _, leaf = key.rpartition(".")
        node = raw
        for part in filter(None, section.split(".")):
            node = node[part]
        node[leaf] = value
    return raw


def resolved_stages(tmp_path: Path, raw: dict) -> list:
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    Repo.init(tmp_path, no_scm=True)
    return list(Repo(tmp_path).index.stages)


def cell_of(stage) -> tuple[str, str, dict]:
    """(kind, study, cell) from a stage's command: `python stages/{kind}.py [--study S] --subject ...`."""
    words = stage.cmd.split()
    kind = Path(words[1]).stem
    options = dict(zip(words[2::2], words[3::2]))
    return kind, options.pop("--study", "main"), {key.removeprefix("--"): value for key, value in options.items()}


def expected_outs(kind: str, layout: Layout, cell: dict) -> set[str]:
    label = strategy_label(cell["strategy"], cell.get("strength")) if "strategy" in cell else None
    run = (cell.get("method"), label, cell.get("subject"))
    pair_run = (cell.get("variant"), BASELINE, cell.get("pair"))
    paths = {
        "fetch_data": ["data/dreambench"],
        "class_priors": [layout.class_priors(cell.get("subject", ""))],
        "prior_set": [layout.prior_set(cell.get("method", ""), cell.get("subject", ""))],
        "augment": [layout.augmented(label, cell.get("subject")), layout.contact_sheet(label, cell.get("subject"))]
        if label else [],
        "train": [layout.model(*run), layout.train_log(*run) / "metrics.json",
                  layout.train_log(*run) / "plots/metrics/loss.tsv"] if label else [],
        "sample": [layout.samples(*run)] if label else [],
        "evaluate": [layout.scores(*run)] if label else [],
        "gather": [layout.metrics / name for name in
                   ("per_image.csv", "per_prompt.csv", "per_subject.csv", "real_images.csv", "breakdown.csv",
                    "stats.csv", "tests.csv", "encoders.json", "summary.json", "headline.json")],
        "report": [layout.paper] if layout.study == "ablation" else [layout.paper / "figures", layout.paper / "tables"],
        "train_multi": [layout.model(*pair_run), layout.train_log(*pair_run) / "metrics.json",
                        layout.train_log(*pair_run) / "plots/metrics/loss.tsv"],
        "merge_multi": [layout.model(*pair_run)],
        "sample_multi": [layout.samples(*pair_run)] + (
            [] if "@" in (cell.get("variant") or "@") else [layout.retention(cell["variant"], cell["pair"])]),
        "evaluate_multi": [layout.scores(*pair_run)],
        "gather_multi": [layout.metrics / name for name in
                         ("per_image.csv", "per_prompt.csv", "stats.csv", "tests.csv", "retention.csv", "encoders.json",
                          "summary.json", "headline.json")],
        "report_multi": [layout.paper],
        "paper": [layout.paper / "main.pdf"],
    }
    return {str(path) for path in paths[kind]}


def everything() -> dict:
    """The smoke params with every method, strategy and multi-concept variant, so that each kind and item is there."""
    return smoke_params(**{"train.methods": [m for m in METHODS if m != "edlora"], "train.baseline_methods": ["edlora"],
                           "aug.strategies": list(STRATEGIES),
                           "ablation.strategies": [s for s in STRATEGIES if s != BASELINE],
                           "multi.joint": list(METHODS), "multi.merges": {m: list(h) for m, h in MERGES.items()},
                           "multi.regional": list(MULTI_VARIANTS)})


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    return resolved_stages(tmp_path_factory.mktemp("dag"), everything())


def test_dvc_yaml_builds_the_grid_each_study_gathers(stages):
    p = validate_params(everything())
    for study in STUDIES:
        evaluated = set()
        for stage in stages:
            if stage.name == "stage_inputs":
                continue
            kind, where, cell = cell_of(stage)
            if where == study and kind == "evaluate":
                evaluated.add((cell["method"], strategy_label(cell["strategy"], cell.get("strength")), cell["subject"]))
            elif where == study and kind == "evaluate_multi":
                evaluated.add((cell["variant"], BASELINE, cell["pair"]))
        assert evaluated == set(grid.runs(p, study)), study


def test_each_stage_depends_on_its_inputs_file_and_writes_where_the_layout_says(stages):
    kinds = set()
    for stage in stages:
        if stage.name == "stage_inputs":
            continue
        kind, study, cell = cell_of(stage)
        kinds.add(kind)
        spec = dag.KINDS[kind]
        deps = {dep.def_path for dep in stage.deps}
        assert str(dag.inputs_file(study, kind, cell.get(spec.by))) in deps, stage.name
        # its own subject's (or pair's subjects') identifier, no other subject's
        subject_files = {d for d in deps if d.startswith(str(dag.INPUTS / study / "subjects"))}
        subjects = key_subjects(cell["pair"]) if "pair" in cell else [cell.get("subject")]
        assert subject_files == ({str(dag.subject_file(study, s)) for s in subjects} if spec.per_subject else set())
        # params and code reach a stage through its inputs file only
        assert not [d for d in deps if d.startswith(("src", "stages"))] and not stage.params, stage.name
        assert {out.def_path for out in stage.outs} == expected_outs(kind, Layout(study), cell), stage.name
    assert kinds == set(dag.KINDS)


def test_every_stage_can_be_restored_from_the_run_cache(stages):
    """DVC 3.67 saves no run of a stage with a plain `cache: false` output (Stage.reproduce: `run_cache=not
    no_cache_outs`; metrics and plots are exempt), so a clone with the run cache would run it again."""
    plain_uncached = [f"{stage.name}: {out.def_path}" for stage in stages for out in stage.outs
                      if not (out.use_cache or out.metric or out.plot)]
    assert plain_uncached == []


def test_stage_inputs_depends_on_all_code_and_params(stages):
    stage = next(s for s in stages if s.name == "stage_inputs")
    assert {dep.def_path for dep in stage.deps if not dep.def_path.endswith(".yaml")} == {"stages", "src/dreamstudy"}
    sections = {key for dep in stage.deps if hasattr(dep, "params") and dep.params for key in dep.params}
    assert sections == set(load_params(ROOT / "params.smoke.yaml").model_dump())


@pytest.fixture(scope="module")
def inputs():
    return dag.stage_inputs(validate_params(smoke_params(**{"train.dreambooth.prior_preservation": True})))


def code_of(inputs, kind, item=None, study="main") -> set[str]:
    return set(inputs[dag.inputs_file(study, kind, item)]["code"])


def params_of(inputs, kind, item=None, study="main") -> set[str]:
    return set(inputs[dag.inputs_file(study, kind, item)]["params"])


def test_a_method_stage_executes_its_own_module_and_the_shared_ones(inputs):
    methods = {f"src/dreamstudy/methods/{m}.py" for m in METHODS}
    tokens = "src/dreamstudy/methods/tokens.py"
    for kind in ("train", "sample"):
        for method in METHODS:
            code = code_of(inputs, kind, method)
            composed = {"edlora": ["lora"], "orthogonal": ["lora"]}.get(method, [])  # their adapters are LoRA's
            assert code & methods == {f"src/dreamstudy/methods/{m}.py" for m in [method, *composed]}, (kind, method)
            assert (tokens in code) == (method in ("textual_inversion", "custom_diffusion", "edlora")), (kind, method)
            assert f"stages/{kind}.py" in code
    assert not code_of(inputs, "prior_set", "textual_inversion") & methods  # it reads params, imports no method
    assert "src/dreamstudy/methods/trainer.py" in code_of(inputs, "train", "lora")
    assert "src/dreamstudy/methods/trainer.py" not in code_of(inputs, "sample", "lora")


def test_a_strategy_stage_executes_its_own_module_and_mix_every_one(inputs):
    strategies = {f"src/dreamstudy/augment/{s}.py" for s in STRATEGIES}
    for strategy in STRATEGIES:
        own = code_of(inputs, "augment", strategy) & strategies
        assert own == (strategies if strategy == "mix" else {f"src/dreamstudy/augment/{strategy}.py"}), strategy
    assert "src/dreamstudy/augment/prompts/scenes.txt" in code_of(inputs, "augment", "background")
    assert "src/dreamstudy/augment/prompts/scenes.txt" not in code_of(inputs, "augment", "classic")
    assert "src/dreamstudy/report/published.csv" in code_of(inputs, "report")
    assert not code_of(inputs, "gather") & {f"src/dreamstudy/metrics/{m}.py" for m in ("encoders", "diversity")}


def test_only_the_registries_import_our_modules_inside_functions():
    """Imports at run time must be the ones `stage_inputs` makes too (it runs the registries' loaders)."""
    allowed = {("dag.py", "_load_item"), ("dag.py", "_augment"), ("registry.py", "method_module"),
               ("registry.py", "strategy_module"), ("merge_multi.py", "main")}  # the last: Kind.item_modules
    late = []
    for path in [*SRC.rglob("*.py"), *(ROOT / "stages").glob("*.py")]:
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                         else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                if any(n.split(".")[0] == "dreamstudy" for n in names) and (path.name, function.name) not in allowed:
                    late.append(f"{path.relative_to(ROOT)}:{node.lineno} in {function.name}")
    assert not late


def test_only_mix_of_shows_merge_executes_and_reads_the_fusion(inputs):
    fusion = "src/dreamstudy/multi/mix_of_show.py"
    for variant in ("lora_sum", "edlora_fusion"):  # the smoke study's merges
        code = code_of(inputs, "merge_multi", variant, study="multi")
        params = params_of(inputs, "merge_multi", variant, study="multi")
        assert (fusion in code) == (variant == "edlora_fusion"), variant
        assert ("multi.fusion" in params) == (variant == "edlora_fusion"), variant


def test_a_stage_reads_only_the_params_it_declares(inputs):
    assert params_of(inputs, "augment", "none") == set()
    assert {"aug.strength", "aug.num_per_image", "seed"} <= params_of(inputs, "augment", "classic")
    assert "aug.strength" not in params_of(inputs, "augment", "classic", study="ablation")  # from its command
    assert {"aug.img2img", "model.pretrained"} <= params_of(inputs, "augment", "img2img")
    assert "aug.img2img" not in params_of(inputs, "augment", "classic")
    assert params_of(inputs, "prior_set", "lora") == {"train.lora.prior_preservation"}
    assert params_of(inputs, "prior_set", "dreambooth") == {"train.dreambooth.prior_preservation", "priors.weight"}
    assert "train.checkpoint_every" not in params_of(inputs, "train", "lora")
    assert "train.dreambooth" not in params_of(inputs, "train", "lora")
    assert "data.subjects" in params_of(inputs, "gather")
    assert "ablation" in params_of(inputs, "gather", study="ablation")
    p = validate_params(smoke_params())
    assert inputs[dag.inputs_file("main", "train", "lora")]["params"]["train.lora"] == p.train.lora.model_dump()


def test_a_key_outside_the_view_is_refused():
    p = validate_params(smoke_params())
    view = dag.view(p, "main", "augment", "none", subjects=["dog"])
    assert view.train.identifiers == {"dog": p.train.identifiers["dog"]}  # its own subject's, no other
    with pytest.raises(ParamsError, match=r"stages/augment.py \(main, none\) read `aug.strength`"):
        view.aug.strength  # noqa: B018
    lora = dag.view(p, "main", "train", "lora")
    assert lora.train.lora == p.train.lora and lora.train.checkpoint_every == p.train.checkpoint_every
    with pytest.raises(ParamsError, match="`train.dreambooth.lr`"):
        lora.train.dreambooth.lr  # noqa: B018


def test_renaming_one_subjects_identifier_changes_that_subjects_file_only():
    before = dag.stage_inputs(validate_params(smoke_params()))
    raw = smoke_params()
    raw["train"]["identifiers"]["dog"] = "ohwx"
    after = dag.stage_inputs(validate_params(raw))
    changed = {path for path in after if after[path] != before.get(path)}
    assert changed == {dag.subject_file(study, "dog") for study in STUDIES}
    assert after[dag.subject_file("main", "dog")] == {"params": {"train.identifiers.dog": "ohwx"}}
