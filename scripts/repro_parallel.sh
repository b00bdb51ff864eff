#!/usr/bin/env bash
# One machine, several GPUs: the DAG layer by layer (python -m dreamstudy.scaleout), each layer's stages run by
# GNU parallel with one GPU per job slot (CUDA_VISIBLE_DEVICES = slot - 1), each by `dvc repro --single-item`
# (without it, concurrent repros lock the stages they share upstream: treeverse/dvc#5795); a barrier after each
# layer; then `dvc repro`, which finds nothing left to run and completes dvc.lock.
#
#   scripts/repro_parallel.sh [SLOTS]     SLOTS: parallel jobs, default: the GPUs that nvidia-smi lists
#
# Logs under logs/parallel/<key>/ (key: the commit and the uncommitted changes to params.yaml, dvc.yaml and the
# code): NN.joblog (GNU parallel's job log of layer NN) and <stage>.log. After a failure, fix it and run the same
# command again: each layer resumes (parallel --resume-failed), running its failed and unrun stages only.
# GNU parallel: `sudo apt-get install parallel` (Debian, Ubuntu).
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }
command -v parallel > /dev/null || die "GNU parallel is not installed: sudo apt-get install parallel"
if [ $# -ge 1 ]; then
    slots=$1
else
    slots=$( (nvidia-smi -L 2> /dev/null || true) | grep -c '^GPU' || true)
    [ "$slots" -ge 1 ] || die "no GPU found (nvidia-smi -L): give the number of job slots, e.g. $0 2 on CPUs"
fi
[[ "$slots" =~ ^[0-9]+$ ]] && [ "$slots" -ge 1 ] || die "SLOTS must be a number of jobs >= 1 (got '$slots')"

key=$( { git rev-parse HEAD; git diff HEAD -- params.yaml dvc.yaml src stages; } | sha256sum | cut -c1-12)
logs=logs/parallel/$key
mkdir -p "$logs"
python -m dreamstudy.scaleout layers "$logs/layers"
for layer in "$logs"/layers/*.txt; do
    name=$(basename "$layer" .txt)
    echo "layer $name: $(wc -l < "$layer") stage(s), $slots slot(s)"
    if ! parallel --jobs "$slots" --joblog "$logs/$name.joblog" --resume-failed --halt never --arg-file "$layer" \
            "CUDA_VISIBLE_DEVICES=\$(( {%} - 1 )) dvc --wait-for-lock repro --single-item {} > $logs/{}.log 2>&1"; then
        # the joblog's Seq is the stage's line in the layer file; a resumed job's last line is its latest run
        failed=$(awk -F'\t' 'NR > 1 {failed[$1] = ($7 != 0 || $8 != 0)} END {for (s in failed) if (failed[s]) print s}' \
            "$logs/$name.joblog" | sort -n | while read -r seq; do sed -n "${seq}p" "$layer"; done)
        echo "error: layer $name: failed stage(s), logs in $logs/:" >&2
        echo "$failed" | sed 's/^/  /' >&2
        echo "fix and run $0 $slots again: the layer resumes with these" >&2
        exit 1
    fi
done
dvc repro
