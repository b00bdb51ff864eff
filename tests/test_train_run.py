"""The train stage's library entry: a token the method cannot train stops it before any model loads."""

import pytest

from dreamstudy.data.dreambench import SUBJECTS
from dreamstudy.data.fetch import Subject
from dreamstudy.methods import run
from dreamstudy.params import load_params
from tests.helpers import ROOT


def test_untrainable_token_stops_before_models_load(tmp_path, monkeypatch):
    def no_models(*args, **kwargs):
        raise AssertionError("models loaded before the token was checked")

    monkeypatch.setattr(run, "load_components", no_models)
    p = load_params(ROOT / "params.smoke.yaml")
    p = p.model_copy(update={"train": p.train.model_copy(update={"identifier": "|endoftext|"})})
    subject = Subject("dog", SUBJECTS["dog"], True, [], [])
    with pytest.raises(ValueError, match="train.identifier"):
        run.train_run(p, subject=subject, method_name="textual_inversion", strategy="none",
                      training_set=tmp_path / "missing", priors_root=tmp_path, out_dir=tmp_path / "out",
                      checkpoint_dir=tmp_path / "ckpt")
