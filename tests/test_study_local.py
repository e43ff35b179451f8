"""The study end to end with the local executor (2 workers x 1 thread) on smoke trainings: killed
midway and rerun, it retrains nothing that had finished and resumes what had not."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_pipeline import tracked_files

from ctgan.study import expand_jobs, is_finished, load_study, scan_list

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def lock_free(path: Path) -> bool:
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def wait_for(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.3)


def test_killed_study_reruns_nothing_finished(tmp_path, tiny_phantom):
    spec = {
        "base_params": str(REPO / "params.yaml"),
        "profile": "smoke",
        "data_dir": str(tiny_phantom),
        "settings": ["3d-B"],
        "seeds": [0, 1],
        # long enough that a job is still training for several of the workers' 2-s checks of
        # the study after its first scale (at 10 iterations a fast CPU finished the job first)
        "overrides": {"train.iterations_per_scale": 100},
    }
    executor = {"kind": "local", "local": {"workers": 2, "threads_per_worker": 1}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"study": spec, "executor": executor}))
    study = load_study(path)
    command = [sys.executable, "-m", "ctgan.cli", "study", str(path)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(list(study.out_dir.glob("*/study.json"))) >= 1, 300, "a finished job")
        jobs = expand_jobs(study, scan_list(study))
        assert len(jobs) == 4
        # kill it while a job is mid-run (its first scale done)
        wait_for(
            lambda: any(
                (Path(j.work_root) / f"{j.name}-{j.key}" / "checkpoint.pt").is_file()
                and not is_finished(j)
                for j in jobs
            ),
            120,
            "a job mid-run",
        )
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    # the local workers notice that the study is gone and stop (their locks are released)
    for lock in Path(study.work_dir).glob(".*.lock"):
        wait_for(lambda lock=lock: lock_free(lock), 60, f"{lock.name} to be released")
    finished = {
        j.name: (Path(j.model_dir) / "checkpoint.pt").stat() for j in jobs if is_finished(j)
    }
    assert 1 <= len(finished) < len(jobs)
    unfinished = [j for j in jobs if j.name not in finished]
    assert any((Path(j.work_root) / f"{j.name}-{j.key}").is_dir() for j in unfinished)

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(unfinished)} of 4 jobs to run" in rerun.stderr
    for job in jobs:
        log = Path(job.log_path).read_text()
        if job.name in finished:  # never trained again: same file, one start in its log
            again = (Path(job.model_dir) / "checkpoint.pt").stat()
            assert (again.st_ino, again.st_mtime_ns) == (
                finished[job.name].st_ino,
                finished[job.name].st_mtime_ns,
            )
            assert log.count(f"job {job.name} (key") == 1
        assert log.count("scale 0 done") == 1 and log.count("scale 1 done") == 1, log
    table = pd.read_csv(study.results_dir / "results.tsv", sep="\t")
    assert sorted(table["name"]) == sorted(j.name for j in jobs)
    assert table["reconstruction.psnr"].notna().all()


def test_dvc_repro_of_the_study_pipeline_leaves_a_model_per_scan(tmp_path):
    """`dvc repro studies/many-scans/dvc.yaml` in a copy of the repository (2 phantom scans)."""
    repo = tmp_path / "repo"
    for name in tracked_files():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes((REPO / name).read_bytes())
    study_params = repo / "studies" / "many-scans" / "params.yaml"
    params = yaml.safe_load(study_params.read_text())
    params["phantom"].update(scans=2, size=64)
    params["study"]["settings"] = ["3d-B"]
    params["executor"]["local"] = {"workers": 2, "threads_per_worker": 1}
    study_params.write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"],
    ):
        subprocess.run(cmd, cwd=repo, env=env, check=True)
    dvc = str(Path(sys.executable).parent / "dvc")

    def repro() -> subprocess.CompletedProcess:
        return subprocess.run(
            [dvc, "repro", "studies/many-scans/dvc.yaml"],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )

    result = repro()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study_dir = repo / "studies" / "many-scans"
    models = sorted(study_dir.glob("models/*/study.json"))
    assert len(models) == 2
    table = pd.read_csv(study_dir / "results" / "results.tsv", sep="\t")
    assert len(table) == 2 and table["scan"].nunique() == 2
    summary = pd.read_csv(study_dir / "results" / "summary.tsv", sep="\t")
    psnr = summary[summary["metric"] == "reconstruction.psnr"].iloc[0]
    assert psnr["n"] == 2 and psnr["mean"] == table["reconstruction.psnr"].mean()
    again = repro()
    assert again.returncode == 0 and "didn't change" in again.stdout, again.stdout[-2000:]
