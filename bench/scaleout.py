"""The scale-out recipes on the smoke DAG (CPU, tiny model), against a serial run of the same commit.

    python bench/scaleout.py [--slots 2] [--work /tmp/scaleout]

In --work, a clone of this repository's HEAD with params.smoke.yaml as its committed params.yaml and a local
folder as its default DVC remote; from it, clones that each run the study one way:
 (serial)   `dvc repro`;
 (a)        scripts/repro_parallel.sh SLOTS: layers, GNU parallel slots in one workspace;
 (b) + (c)  two workers, each in its own clone, each taking half of every layer (python -m dreamstudy.scaleout
            --shard I/2, scripts/repro_worker.sh: dvc repro --pull, dvc push --run-cache), both at once, layer
            after layer; worker 0 is killed (SIGKILL, its whole process group) inside its first stage of the
            training layer and its share of that layer rerun; then
 (final)    a third clone's `dvc repro --pull`, which must run no stage command.
Compares every output hash of each run's dvc.lock with the serial run's, counts the stage commands each ran
(DVC prints "> command" for each), and writes wall times and results to results/bench/scaleout.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def own_code(clone: Path) -> dict[str, str]:
    """The environment of a command in `clone`: its stages import the clone's dreamstudy, not the installed one."""
    return {**os.environ, "PYTHONPATH": str(clone / "src")}


def sh(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=own_code(cwd))
    if check and result.returncode:
        raise RuntimeError(f"{' '.join(args)} in {cwd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def outputs(folder: Path) -> dict[str, str]:
    """path -> md5 of every stage output in dvc.lock."""
    lock = yaml.safe_load((folder / "dvc.lock").read_text())["stages"]
    return {out["path"]: out.get("md5", "") for stage in lock.values() for out in stage.get("outs", [])}


def commands_run(text: str) -> int:
    return sum(line.startswith("> ") for line in text.splitlines())


def compare(name: str, folder: Path, serial: dict[str, str], seconds: float, ran: int) -> dict:
    mine = outputs(folder)
    differing = sorted(p for p in serial.keys() | mine.keys() if serial.get(p) != mine.get(p))
    print(f"{name}: {seconds:.0f} s, {ran} stage command(s), {len(differing)} output(s) differ from serial")
    return {"seconds": round(seconds, 1), "stage_commands": ran, "outputs": len(mine),
            "differing_outputs": differing, "same_lock_outputs": not differing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/scaleout"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    origin = args.work / "origin"
    sh(["git", "clone", "-q", str(REPO), str(origin)], args.work)
    shutil.copy(origin / "params.smoke.yaml", origin / "params.yaml")
    sh(["dvc", "remote", "add", "-d", "bench", str(args.work / "remote")], origin)
    sh(["git", "commit", "-qam", "smoke study"], origin)

    def clone(name: str) -> Path:
        sh(["git", "clone", "-q", str(origin), str(args.work / name)], args.work)
        return args.work / name

    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
               "commit": sh(["git", "rev-parse", "HEAD"], REPO).stdout.strip(), "slots": args.slots}
    start = time.perf_counter()
    serial = clone("serial")
    ran = commands_run(sh(["dvc", "repro"], serial).stdout)
    hashes = outputs(serial)
    results["serial"] = compare("serial", serial, hashes, time.perf_counter() - start, ran)

    start = time.perf_counter()
    parallel = clone("parallel")
    sh([str(parallel / "scripts/repro_parallel.sh"), str(args.slots)], parallel)
    ran = sum(commands_run(log.read_text()) for log in (parallel / "logs/parallel").glob("*/*.log"))
    results["a_parallel"] = compare(f"(a) {args.slots} slots", parallel, hashes, time.perf_counter() - start, ran)

    start = time.perf_counter()
    workers = [clone(f"worker{i}") for i in range(2)]
    for i, folder in enumerate(workers):
        sh([sys.executable, "-m", "dreamstudy.scaleout", "layers", "layers", "--shard", f"{i}/2"], folder)
    layers = sorted(p.name for p in (workers[0] / "layers").iterdir())
    train_layer = next(name for name in layers
                       if any(s.startswith("train@") for s in (workers[0] / "layers" / name).read_text().split()))
    ran, killed = 0, None
    for layer in layers:
        jobs = [subprocess.Popen([str(f / "scripts/repro_worker.sh"), str(f / "layers" / layer)], cwd=f,
                                 env=own_code(f), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)
                for f in workers]
        if layer == train_layer:  # kill worker 0 once its first training stage's command has been running a while
            time.sleep(15)
            os.killpg(jobs[0].pid, signal.SIGKILL)
            killed = jobs[0].communicate()[0]
            while True:  # DVC drops a dead process's lock only once its PID is gone
                try:
                    os.killpg(jobs[0].pid, 0)
                    time.sleep(0.1)
                except ProcessLookupError:
                    break
            ran += commands_run(killed)
            jobs[0] = subprocess.Popen([str(workers[0] / "scripts/repro_worker.sh"),
                                        str(workers[0] / "layers" / layer)],
                                       cwd=workers[0], env=own_code(workers[0]), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
        for job in jobs:
            output = job.communicate()[0]
            if job.returncode:
                raise RuntimeError(f"a worker failed on layer {layer}:\n{output[-3000:]}")
            ran += commands_run(output)
    seconds = time.perf_counter() - start
    results["b_workers"] = {"seconds": round(seconds, 1), "stage_commands": ran, "layers": len(layers),
                            "killed_in_layer": train_layer,
                            "killed_worker_had_started": [line[2:] for line in (killed or "").splitlines()
                                                          if line.startswith("> ")]}
    print(f"(b) two workers: {seconds:.0f} s, {ran} stage command(s) (with the killed one's)")

    start = time.perf_counter()
    final = clone("final")
    ran = commands_run(sh(["dvc", "repro", "--pull"], final).stdout)
    results["b_final_clone"] = compare("(b) final clone", final, hashes, time.perf_counter() - start, ran)
    out = REPO / "results/bench/scaleout.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(out)


if __name__ == "__main__":
    main()
