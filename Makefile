# The two commands of the README. Each does its own set-up.
PYTHON ?= python
# TeX Live from Debian's packages, for paper/main.pdf (the `paper` stage)
LATEX_PACKAGES = latexmk texlive-latex-base texlive-latex-recommended texlive-fonts-recommended poppler-utils
SUDO = $(shell [ "$$(id -u)" != 0 ] && command -v sudo)
# Without LaTeX, `make smoke` runs every stage but `paper` (the reports are its only inputs but main.tex)
HAS_LATEX = $(shell command -v latexmk > /dev/null && command -v pdflatex > /dev/null && echo yes)

.PHONY: install install-gpu install-latex smoke smoke-dag test

install:
	$(PYTHON) -m pip install -q -r requirements.txt

# bitsandbytes for train.use_8bit_adam (requirements-gpu.txt); the tests cover that switch too
install-gpu: install
	$(PYTHON) -m pip install -q -r requirements-gpu.txt

install-latex:
	$(SUDO) apt-get install -y -q --no-install-recommends $(LATEX_PACKAGES)

# The whole DAG offline on CPU at smoke scale: switches this working copy's params.yaml to
# params.smoke.yaml (`git checkout params.yaml` returns to the paper-scale study).
smoke: install smoke-dag

smoke-dag:
	cp params.smoke.yaml params.yaml
ifeq ($(HAS_LATEX),yes)
	dvc repro
else
	dvc repro report report_ablation report_multi
	@echo "paper/main.pdf skipped: LaTeX is not installed. 'make install-latex' installs it (TeX Live, Debian's" \
	      "packages), then 'dvc repro paper' compiles the paper; or compile paper/ as it is elsewhere (Overleaf)."
endif

test: install-gpu
	$(PYTHON) -m pytest -q
