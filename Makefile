# The two commands of the README. Each does its own set-up.
PYTHON ?= python

.PHONY: install install-gpu smoke smoke-dag test

install:
	$(PYTHON) -m pip install -q -r requirements.txt

# bitsandbytes for train.use_8bit_adam (requirements-gpu.txt); the tests cover that switch too
install-gpu: install
	$(PYTHON) -m pip install -q -r requirements-gpu.txt

# The whole DAG offline on CPU at smoke scale: switches this working copy's params.yaml to
# params.smoke.yaml (`git checkout params.yaml` returns to the paper-scale study).
smoke: install smoke-dag

smoke-dag:
	cp params.smoke.yaml params.yaml
	dvc repro

test: install-gpu
	$(PYTHON) -m pytest -q
