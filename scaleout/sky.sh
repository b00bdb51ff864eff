#!/usr/bin/env bash
# Several machines with SkyPilot (scaleout/sky.yaml): launch the cluster, run each layer of the DAG on it in
# turn (`sky exec` returns when the layer is done: the barrier), then restore every stage here from the remote's
# run cache, which writes the complete dvc.lock (no stage command runs), and take the cluster down.
#
#   scaleout/sky.sh REPO_URL      (from a clone of the study at the commit to run, pushed to REPO_URL, its DVC
#                                  remote set in the committed .dvc/config)
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }
[ $# -eq 1 ] || die "usage: $0 REPO_URL (a Git remote the nodes can clone)"
command -v sky > /dev/null || die "SkyPilot not found: pip install 'skypilot[aws]' (or [gcp], [kubernetes], ...)"
dvc remote default > /dev/null 2>&1 || die "no default DVC remote: dvc remote add -d NAME URL, commit .dvc/config"
[ -z "$(git status --porcelain -- params.yaml dvc.yaml src stages .dvc/config)" ] || die "commit params.yaml, dvc.yaml, the code and .dvc/config first"
commit=$(git rev-parse HEAD)
python -m dreamstudy.scaleout layers build/layers
env=(--env REPO_URL="$1" --env COMMIT="$commit")
sky launch -y -c study scaleout/sky.yaml "${env[@]}" --env LAYER=00
for layer in build/layers/*.txt; do
    name=$(basename "$layer" .txt)
    [ "$name" = 00 ] || sky exec study scaleout/sky.yaml "${env[@]}" --env LAYER="$name"
done
dvc repro --pull
sky down -y study
echo "dvc.lock complete: git add dvc.lock && git commit"
