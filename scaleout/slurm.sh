#!/usr/bin/env bash
# Several machines with Slurm and a shared file system: one job array per layer of the DAG, each array waiting
# for the previous one (--dependency=afterok), one GPU per array task, every task in its own clone of the study
# at COMMIT (params.yaml committed), every clone on one shared DVC cache: what a task needs upstream is restored
# from the cache's run cache, never recomputed. A last job reproduces the whole DAG in this clone (nothing runs)
# and writes the complete dvc.lock to commit.
#
#   scaleout/slurm.sh /shared/dvc-cache [MAX_TASKS]      (from a clone of the study, on the login node)
#
# MAX_TASKS: array tasks running at once (default 32). Array tasks' logs: logs/slurm/<layer>_<task>.out.
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }
[ $# -ge 1 ] || die "usage: $0 SHARED_CACHE_DIR [MAX_TASKS]"
cache=$1
max_tasks=${2:-32}
[ -d "$cache" ] || die "$cache is not a directory every node mounts (mkdir it on the shared file system)"
command -v sbatch > /dev/null || die "sbatch not found: run this on a Slurm login node"
[ -z "$(git status --porcelain -- params.yaml dvc.yaml src stages)" ] || die "commit params.yaml, dvc.yaml and the code first: every task clones COMMIT"
commit=$(git rev-parse HEAD)
repo=$(pwd)

dvc cache dir --local "$cache" && dvc config --local cache.shared group && dvc config --local cache.type symlink
mkdir -p logs/slurm
python -m dreamstudy.scaleout layers logs/slurm/layers
after=""
for layer in logs/slurm/layers/*.txt; do
    name=$(basename "$layer" .txt)
    count=$(wc -l < "$layer")
    [ "$count" -ge 1 ] || die "layer $name has no stages"
    # each task: its own clone at COMMIT, the shared cache, its line of the layer file
    job=$(sbatch --parsable ${after:+--dependency=afterok:$after} --gres=gpu:1 --job-name="study-$name" \
        --array=1-"$count"%"$max_tasks" --output="logs/slurm/${name}_%a.out" --export=ALL,DVC_SHARED_CACHE="$cache" \
        --wrap "set -e; ws=\${TMPDIR:-/tmp}/study_\${SLURM_JOB_ID}_\${SLURM_ARRAY_TASK_ID}; \
git clone -q '$repo' \$ws && cd \$ws && git checkout -q $commit; \
sed -n \"\${SLURM_ARRAY_TASK_ID}p\" '$repo/$layer' > stage.txt; \
scripts/repro_worker.sh stage.txt; cd / && rm -rf \$ws")
    echo "layer $name: $count stage(s), job $job"
    after=$job
done
job=$(sbatch --parsable --dependency=afterok:"$after" --job-name=study-lock --output=logs/slurm/lock.out \
    --wrap "cd '$repo' && dvc repro")
echo "dvc.lock: job $job (then: git add dvc.lock && git commit)"
