"""The DAG in layers, for schedulers that exist (GNU parallel on one machine, Slurm job arrays, SkyPilot).

DVC 3.67 has no parallel `repro` (treeverse/dvc#755); what works is several `dvc repro` processes, each on
stages whose inputs are already there. A stage's layer is one more than the deepest layer among the stages
it depends on, so every stage of a layer reads outputs of earlier layers only: a barrier between layers is
all the scheduling the study needs, and each layer is a flat list of independent jobs.

    python -m dreamstudy.scaleout layers FOLDER [--shard I/N]

writes FOLDER/00.txt, 01.txt, ...: each layer's stage names, one per line (with --shard, the I-th of N
workers' share: every N-th stage of each layer, from the I-th). The graph is `dvc dag --dot`'s: DVC's own
dependencies, whatever dvc.yaml says. scripts/repro_parallel.sh and scaleout/ (Slurm, SkyPilot) read these
files.

    python -m dreamstudy.scaleout push-runs [--remote NAME]

pushes this workspace's run cache with every output of its runs (`push_runs`): what a worker does after
`dvc push --run-cache STAGE`, so that other clones restore its stages instead of running them."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from dreamstudy.errors import StudyError
from dreamstudy.io import atomic_dir

NODE = re.compile(r'^"(?P<name>[^"]+)";$')
EDGE = re.compile(r'^"(?P<upstream>[^"]+)" -> "(?P<downstream>[^"]+)";$')


class ScaleOutError(StudyError, ValueError):
    """The DAG cannot be split into layers (no stages, a cycle, an unreadable graph, a bad shard)."""


def parse_dot(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(stages, (upstream, downstream) edges) of `dvc dag --dot`'s output."""
    stages, edges = [], []
    for line in text.splitlines():
        line = line.strip()
        if node := NODE.match(line):
            stages.append(node["name"])
        elif edge := EDGE.match(line):
            edges.append((edge["upstream"], edge["downstream"]))
        elif line not in ("strict digraph {", "}", ""):
            raise ScaleOutError(f"dvc dag --dot: unexpected line {line!r}")
    return stages, edges


def layers(stages: Iterable[str], edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The stages by layer, each layer in `stages`' order: a stage is one layer after its deepest upstream."""
    stages = list(stages)
    if not stages:
        raise ScaleOutError("the DAG has no stages (dvc.yaml empty?)")
    upstream = {stage: set() for stage in stages}
    for before, after in edges:
        if before not in upstream or after not in upstream:
            raise ScaleOutError(f"edge {before!r} -> {after!r} names a stage the graph does not list")
        upstream[after].add(before)
    depth: dict[str, int] = {}
    while len(depth) < len(stages):
        ready = {s: 1 + max((depth[u] for u in upstream[s]), default=-1)
                 for s in stages if s not in depth and upstream[s] <= depth.keys()}
        if not ready:
            raise ScaleOutError(f"the DAG has a cycle among {sorted(set(stages) - depth.keys())}")
        depth |= ready
    return [[s for s in stages if depth[s] == layer] for layer in range(max(depth.values()) + 1)]


def shard(layer: list[str], index: int, count: int) -> list[str]:
    """Worker `index`'s share of a layer among `count` workers: every count-th stage from the index-th."""
    return layer[index::count]


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N), 0 <= I < N."""
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not int(match[1]) < int(match[2]):
        raise ScaleOutError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/2")
    return int(match[1]), int(match[2])


def dvc_dag(repo: Path) -> str:
    result = subprocess.run(["dvc", "dag", "--dot"], cwd=repo, capture_output=True, text=True)
    if result.returncode:
        raise ScaleOutError(f"dvc dag --dot failed in {repo}: {result.stderr.strip()}")
    return result.stdout


def write_layers(folder: Path, by_layer: list[list[str]]) -> list[Path]:
    """FOLDER/NN.txt per layer (empty for a worker without stages in that layer), the folder replaced whole."""
    with atomic_dir(folder) as tmp:
        for number, stages in enumerate(by_layer):
            (tmp / f"{number:02d}.txt").write_text("".join(f"{s}\n" for s in stages))
    return sorted(folder.iterdir())


def push_runs(repo: Path, remote: str | None = None) -> int:
    """Push the workspace's run cache and every output of its runs to `remote` (default: the default remote);
    returns the runs pushed.

    Why not `dvc push --run-cache` alone: DVC 3.67 commits a run's `cache: false` outputs (the study's loss
    curves and headline metrics) to the local cache with the run (stage/cache.py, `_uncached_outs`), but pushes
    only the outputs in its data index, which leaves those out; a clone that pulls the run cache then cannot
    restore such a stage and runs it again. The run entries name all their outputs, so those are pushed here.
    DVC's Python API has no public call for this: it uses `Repo.stage_cache` and `Repo.cloud`."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        runs = dvc.stage_cache.push(remote)
        for objects in dvc.stage_cache.get_used_objs(runs).values():
            dvc.cloud.push(objects, remote=remote)
    return len(runs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="the DVC project (default: here)")
    commands = parser.add_subparsers(dest="command", required=True)
    layer_files = commands.add_parser("layers", help="write each layer's stage names")
    layer_files.add_argument("folder", type=Path, help="where the layer files go (replaced whole)")
    layer_files.add_argument("--shard", default="0/1", help="I/N: the I-th of N workers' share (default: all)")
    push = commands.add_parser("push-runs", help="push the run cache with every output of its runs")
    push.add_argument("--remote", help="default: the default remote")
    args = parser.parse_args(argv)
    try:
        if args.command == "push-runs":
            print(f"{push_runs(args.repo, args.remote)} run(s) pushed with their outputs")
            return
        index, count = parse_shard(args.shard)
        by_layer = [shard(layer, index, count) for layer in layers(*parse_dot(dvc_dag(args.repo)))]
        for path in write_layers(args.folder, by_layer):
            print(f"{path}: {len(path.read_text().splitlines())} stage(s)")
    except ScaleOutError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
