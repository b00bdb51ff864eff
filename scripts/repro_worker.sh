#!/usr/bin/env bash
# One worker's share of one layer, in its own clone of the study at a committed params.yaml (several machines:
# scaleout/slurm.sh, scaleout/sky.yaml). Each stage is reproduced without --single-item: what it needs upstream,
# computed by other workers, is restored from DVC's run cache, not recomputed.
#
#   scripts/repro_worker.sh LAYER_FILE     LAYER_FILE: stage names, one per line (python -m dreamstudy.scaleout)
#
# With a DVC remote (dvc remote add -d NAME URL): dvc repro --pull STAGE, then dvc push --run-cache STAGE and
# python -m dreamstudy.scaleout push-runs (the runs' `cache: false` outputs, which DVC 3.67 leaves out).
# With DVC_SHARED_CACHE=/shared/dir (a cache every worker mounts, e.g. a cluster's file system): dvc repro STAGE,
# its results and run cache written to that cache.
# A killed worker is resumed by running the same command: finished stages are restored or found unchanged.
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }
[ $# -eq 1 ] && [ -f "$1" ] || die "usage: $0 LAYER_FILE (a file of stage names; got '${1:-}')"
if [ -n "${DVC_SHARED_CACHE:-}" ]; then
    [ -d "$DVC_SHARED_CACHE" ] || die "DVC_SHARED_CACHE=$DVC_SHARED_CACHE is not a directory"
    dvc cache dir --local "$DVC_SHARED_CACHE"
    dvc config --local cache.shared group
    dvc config --local cache.type symlink  # a workspace of many models costs no copies
    repro=(dvc repro)
    push=(true)
else
    dvc remote default > /dev/null 2>&1 || die "no default DVC remote in $(pwd): dvc remote add -d NAME URL" \
        "(then commit .dvc/config), or set DVC_SHARED_CACHE to a cache directory every worker mounts"
    repro=(dvc repro --pull)
    push=(push_stage)
fi
push_stage() { dvc push --run-cache "$1" && python -m dreamstudy.scaleout push-runs; }
while read -r stage; do
    [ -n "$stage" ] || continue
    echo "== $stage"
    "${repro[@]}" "$stage"
    "${push[@]}" "$stage"
done < "$1"
