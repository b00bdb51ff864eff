"""The params schema stops bad values before any model loads, naming the key and the valid values."""

import ast
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dreamstudy.params import ParamsError, load_params, validate_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke() -> dict:
    return yaml.safe_load((ROOT / "params.smoke.yaml").read_text())


def with_change(raw: dict, dotted: str, value) -> dict:
    raw = copy.deepcopy(raw)
    *parents, last = dotted.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[last] = value
    return raw


def test_committed_params_files_are_valid(tmp_path):
    # the committed params.yaml, not the working copy's: `make smoke` switches that to the smoke scale
    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True)
    if committed.returncode != 0:
        pytest.skip("not a git checkout")
    (tmp_path / "params.yaml").write_text(committed.stdout)
    paper = load_params(tmp_path / "params.yaml")
    assert paper.model.pretrained == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert len(paper.data.subjects) == 30 and paper.train.lora.lr == 1e-4
    assert load_params(ROOT / "params.smoke.yaml").model.pretrained == "tiny"


@pytest.mark.parametrize("key, value, message", [
    ("aug.strength", 1.5, "aug.strength"),
    ("aug.strength", -0.1, "aug.strength"),
    ("train.lora.lr", 0.0, "train.lora.lr"),
    ("train.lora.lr", -1e-4, "train.lora.lr"),
    ("train.lora.steps", 0, "train.lora.steps"),
    ("train.lora.steps", "ten", "train.lora.steps"),
    ("train.lora.rank", 0, "train.lora.rank"),
    ("data.subjects", ["dog", "unicorn"], "unicorn"),
    ("train.methods", ["lora", "magic"], "train.methods"),
    ("train.baseline_methods", ["lora"], "train.baseline_methods"),
    ("aug.strategies", ["none", "cutout"], "aug.strategies"),
    ("sample.scheduler", "heun", "sample.scheduler"),
    ("model.resolution", 30, "model.resolution"),
    ("data.source", "ftp", "data.source"),
    ("train.lora.weight_decay", -0.01, "train.lora.weight_decay"),
    ("train.custom_diffusion.max_grad_norm", 0.0, "train.custom_diffusion.max_grad_norm"),
    ("train.textual_inversion.max_grad_norm", "none", "train.textual_inversion.max_grad_norm"),
    ("aug.img2img.num_inference_steps", 0, "aug.img2img.num_inference_steps"),
    ("aug.img2img.guidance_scale", -1.0, "aug.img2img.guidance_scale"),
    ("aug.controlnet.model", 7, "aug.controlnet.model"),
    ("aug.controlnet.num_inference_steps", 2.5, "aug.controlnet.num_inference_steps"),
    ("aug.controlnet.guidance_scale", -0.5, "aug.controlnet.guidance_scale"),
    ("aug.controlnet.conditioning_scale", -1.0, "aug.controlnet.conditioning_scale"),
    ("aug.controlnet.canny_low", -1, "aug.controlnet.canny_low"),
    ("aug.background.kinds", ["solid", "plasma"], "aug.background.kinds"),
    ("aug.background.kinds", [], "aug.background.kinds"),
    ("aug.background.kinds", ["solid", "solid"], "aug.background.kinds"),
    ("aug.background.num_inference_steps", 0, "aug.background.num_inference_steps"),
    ("aug.background.guidance_scale", -7.5, "aug.background.guidance_scale"),
])
def test_bad_values_name_the_key(smoke, key, value, message):
    with pytest.raises(ParamsError, match=message.replace(".", r"\.")):
        validate_params(with_change(smoke, key, value))


def test_errors_list_the_valid_values(smoke):
    with pytest.raises(ParamsError, match="classic"):
        validate_params(with_change(smoke, "aug.strategies", ["cutout"]))
    with pytest.raises(ParamsError, match="backpack_dog"):
        validate_params(with_change(smoke, "data.subjects", ["unicorn"]))


def test_unknown_and_missing_keys(smoke):
    with pytest.raises(ParamsError, match=r"aug\.strenght: unknown key"):
        validate_params(with_change(smoke, "aug.strenght", 0.5))
    raw = copy.deepcopy(smoke)
    del raw["train"]["methods"]
    with pytest.raises(ParamsError, match=r"train\.methods: missing"):
        validate_params(raw)


def test_canny_thresholds_in_order(smoke):
    with pytest.raises(ParamsError, match=r"aug\.controlnet: .*canny_low \(100\) must be below canny_high \(50\)"):
        validate_params(with_change(smoke, "aug.controlnet.canny_high", 50))


def test_null_max_grad_norm_turns_clipping_off(smoke):
    assert validate_params(with_change(smoke, "train.lora.max_grad_norm", None)).train.lora.max_grad_norm is None


def test_settings_left_out_keep_their_former_hard_coded_values(smoke):
    """A params file from before these keys were settings still validates, to the values then built in."""
    raw = copy.deepcopy(smoke)
    for method in ("dreambooth", "lora", "textual_inversion", "custom_diffusion"):
        del raw["train"][method]["weight_decay"], raw["train"][method]["max_grad_norm"]
    for strategy in ("img2img", "controlnet", "background"):
        del raw["aug"][strategy]
    p = validate_params(raw)
    assert (p.train.lora.weight_decay, p.train.textual_inversion.max_grad_norm) == (1e-2, 1.0)
    assert p.aug.img2img.model_dump() == {"num_inference_steps": 20, "guidance_scale": 7.5}
    assert p.aug.controlnet.model_dump() == {
        "num_inference_steps": 20, "guidance_scale": 7.5, "model": "lllyasviel/sd-controlnet-canny",
        "conditioning_scale": 1.0, "canny_low": 100, "canny_high": 200}
    assert p.aug.background.model_dump() == {
        "num_inference_steps": 30, "guidance_scale": 7.5, "kinds": ["solid", "noise", "stripes", "checker", "scene"]}


def test_local_source_needs_a_path(smoke):
    with pytest.raises(ParamsError, match="local_path"):
        validate_params(with_change(smoke, "data.source", "local"))


def test_stage_stops_before_loading_anything(tmp_path, smoke):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(with_change(smoke, "aug.strength", 2.0)))
    run = subprocess.run([sys.executable, "stages/train.py", "--params", str(bad), "--subject", "dog",
                          "--method", "lora", "--strategy", "none"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0
    assert "aug.strength" in run.stderr and "Traceback" not in run.stderr


def test_stage_rejects_an_item_outside_the_grid(tmp_path, smoke):
    good = tmp_path / "params.yaml"
    good.write_text(yaml.safe_dump(smoke))
    run = subprocess.run([sys.executable, "stages/augment.py", "--params", str(good), "--subject", "cat",
                          "--strategy", "none"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0 and "--subject 'cat'" in run.stderr


def test_schema_names_match_the_registries():
    from dreamstudy.augment import MODULES as STRATEGIES
    from dreamstudy.methods import MODULES as METHODS
    from dreamstudy.params import METHODS as SCHEMA_METHODS
    from dreamstudy.params import STRATEGIES as SCHEMA_STRATEGIES

    assert sorted(SCHEMA_STRATEGIES) == sorted(STRATEGIES)
    assert sorted(SCHEMA_METHODS) == sorted(METHODS)


def test_stages_pause_the_collector_only_while_they_import():
    """Every stage script turns the garbage collector off before its imports (a faster start-up, see
    dreamstudy.cli.stage_args), and stage_args turns it back on."""
    for script in sorted((ROOT / "stages").glob("*.py")):
        body = ast.parse(script.read_text()).body
        assert [ast.unparse(node) for node in body[1:3]] == ["import gc", "gc.disable()"], script.name
    probe = ("import gc; gc.disable(); from dreamstudy.cli import stage_args; "
             "stage_args('report', 'probe', argv=['--params', 'params.smoke.yaml']); print(gc.isenabled())")
    run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "True"


def test_the_ablation_baseline_is_not_a_graded_strategy(smoke):
    with pytest.raises(ParamsError, match="ablation.strategies.*baseline"):
        validate_params(with_change(smoke, "ablation.strategies", ["none", "classic"]))


@pytest.mark.parametrize("cell, outcome", [
    (["--strategy", "none"], "label none"),                              # the baseline: once, no strength
    (["--strategy", "classic", "--strength", "0.5"], "label classic@0.5"),
    (["--strategy", "none", "--strength", "0.5"], "error: --strength is for"),
    (["--strategy", "classic"], "error: --strength None is not in"),
])
def test_ablation_cells(cell, outcome):
    probe = ("import sys; from dreamstudy.cli import stage_args; "
             "args, _ = stage_args('augment', 'probe', sys.argv[1:]); print('label', args.label)")
    run = subprocess.run([sys.executable, "-c", probe, "--params", "params.smoke.yaml", "--study", "ablation",
                          "--subject", "dog", *cell], cwd=ROOT, capture_output=True, text=True)
    assert outcome in run.stdout + run.stderr


@pytest.mark.parametrize("word, message", [
    ("cat", "common token of SD's tokenizer"),      # an ordinary word: the model knows what it means
    ("qxj", "not one token"),                      # split in several tokens
    ("s ks", "not a word of lower-case ASCII letters"),
    ("<sks>", "not a word of lower-case ASCII letters"),
])
def test_an_identifier_must_be_one_rare_token(smoke, word, message):
    with pytest.raises(ParamsError, match=rf"train\.identifiers: .*dog: .*{message}"):
        validate_params(with_change(smoke, "train.identifiers.dog", word))


def test_each_subject_has_its_own_identifier(smoke):
    raw = with_change(smoke, "train.identifiers.dog", smoke["train"]["identifiers"]["backpack"])
    with pytest.raises(ParamsError, match=r"train\.identifiers: .*\['sks'\] name\(s\) several subjects"):
        validate_params(raw)
    raw = copy.deepcopy(smoke)
    del raw["train"]["identifiers"]["dog"]
    with pytest.raises(ParamsError, match=r"no identifier for \['dog'\]"):
        validate_params(raw)
    with pytest.raises(ParamsError, match="unicorn"):
        validate_params(with_change(smoke, "train.identifiers.unicorn", "ohwx"))


def test_the_default_identifiers_are_single_tokens_of_sd_tokenizer(smoke):
    from dreamstudy.models.loading import TINY, load_tokenizer  # the real CLIP vocabulary, rebuilt offline

    tokenizer = load_tokenizer(TINY)
    for subject, word in smoke["train"]["identifiers"].items():
        ids = tokenizer(f"a photo of {word} dog", add_special_tokens=False).input_ids
        assert len(ids) == 5 and tokenizer.decode(ids[3:4]) == word, subject


@pytest.mark.parametrize("key, value, message", [
    ("multi.pairs", [{"first": "dog", "second": "unicorn"}], r"multi\.pairs: .*pairs\[0\] 'dog\+unicorn': unknown"),
    ("multi.pairs", [{"first": "dog", "second": "dog"}], r"pairs\[0\] 'dog\+dog': a pair is two different"),
    ("multi.pairs", [{"first": "dog", "second": "backpack", "third": "can"}], r"multi\.pairs\.0\.third: unknown"),
    ("multi.pairs", [{"first": "dog"}], r"multi\.pairs\.0\.second: missing"),
    ("multi.pairs", [{"first": "dog", "second": "backpack"}, {"first": "dog", "second": "backpack"}],
     "a pair is listed twice"),
    ("multi.pairs", ["dog+backpack"], r"multi\.pairs\.0"),
    ("multi.pairs", [{"first": "backpack", "second": "dog"}], r"'backpack\+dog': .*list the live subject first"),
    ("multi.regions", [[0, 0, 0.5, 1], [0.5, 0, 1.2, 1]], r"multi\.regions: .*regions\[1\] must lie inside \[0, 1\]"),
    ("multi.regions", [[0, 0, 0.5, 1], [0.5, 0, 0.5, 1]], r"regions\[1\] is empty"),
    ("multi.regions", [[0, 0, 1, 1]], "needs two boxes"),
    ("multi.regional", ["lora_average"], r"regional \[.lora_average.\]: not in joint or merges"),
    ("multi.joint", ["lora", "ziplora"], r"multi\.joint"),
    ("multi.merges.lora", ["cat"], r"multi\.merges\.lora"),
    ("multi.merges.dreambooth", ["sum"], r"multi\.merges\.dreambooth: unknown key"),
    ("multi.fusion.solver", "adam", r"multi\.fusion\.solver"),
    ("multi.detection.image_size", 100, r"multi\.detection\.image_size: .*multiple of 16"),
    ("multi.detection.threshold", 1.0, r"multi\.detection\.threshold"),
])
def test_bad_multi_concept_settings_name_the_key(smoke, key, value, message):
    with pytest.raises(ParamsError, match=message):
        validate_params(with_change(smoke, key, value))


def test_a_pair_subject_needs_an_identifier_and_a_merge_its_single_concept_models(smoke):
    raw = with_change(smoke, "multi.pairs", [{"first": "dog", "second": "can"}])
    del raw["train"]["identifiers"]["can"]
    with pytest.raises(ParamsError, match=r"no identifier for \['can'\]"):
        validate_params(raw)
    raw = with_change(smoke, "multi.pairs", [{"first": "dog", "second": "can"}])
    with pytest.raises(ParamsError, match=r"main study's training sets .*data\.subjects lacks \['can'\]"):
        validate_params(raw)
    lacks_lora = r"train\.methods \(or baseline_methods\) lacks 'lora' \(for multi variant 'lora_sum'\)"
    with pytest.raises(ParamsError, match=lacks_lora):
        validate_params(with_change(smoke, "train.methods", ["dreambooth"]))
    with pytest.raises(ParamsError, match=r"aug\.strategies lacks 'none'"):
        validate_params(with_change(smoke, "aug.strategies", ["classic"]))
    raw = with_change(smoke, "train.methods", ["dreambooth"])
    no_merges = {"lora": [], "custom_diffusion": [], "textual_inversion": [], "edlora": [], "orthogonal": []}
    raw = with_change(with_change(raw, "multi.regional", []), "multi.merges", no_merges)
    assert validate_params(with_change(raw, "multi.joint", ["dreambooth"])).multi.variants == ["dreambooth_joint"]
