"""The study on a real SLURM cluster: munged, slurmctld and slurmd on 127.0.0.1
(scripts/slurm-local), a job array of 4 smoke trainings, one requeued mid-run.

When the daemons cannot start this test FAILS. It skips only outside CI (the CI environment
variable unset or not "true") when Debian's slurm-wlm and munge are not installed or when not
run as root; `.ci/run` installs both, so in CI it always runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ctgan.phantom import write_phantom_dataset
from ctgan.study import expand_jobs, load_study, scan_list

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm-local"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue")

pytestmark = pytest.mark.slow


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def slurm_cluster(tmp_path_factory):
    """Start the single-node cluster; yield its environment; stop the daemons by PID."""
    missing = [tool for tool in DAEMONS if shutil.which(tool) is None]
    if not in_ci() and (missing or os.geteuid() != 0):
        reason = f"missing {', '.join(missing)}" if missing else "not root"
        pytest.skip(f"SLURM test needs slurm-wlm, munge and root ({reason}); CI runs it")
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_LOCAL_PORT": os.environ.get("SLURM_LOCAL_PORT", "6817")}
    started = subprocess.run(
        [str(SCRIPT), "start", str(state)], env=env, capture_output=True, text=True
    )
    pid_files = [state / "munge" / "munged.pid", state / "slurmctld.pid", state / "slurmd.pid"]
    try:
        assert started.returncode == 0, f"the SLURM daemons did not start:\n{started.stderr}"
        pids = [int(path.read_text()) for path in pid_files]
        yield {**env, "SLURM_CONF": str(state / "slurm.conf")}
    finally:
        subprocess.run([str(SCRIPT), "stop", str(state)], env=env, check=False)
    for pid in pids:  # stopped by PID: none of them is left running
        assert not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].splitlines()[0].lower()
    except (FileNotFoundError, IndexError):
        return "zombie"


def write_study_file(root: Path, name: str, data_dir: Path, executor: dict) -> Path:
    spec = {
        "base_params": str(REPO / "params.yaml"),
        "profile": "smoke",
        "data_dir": str(data_dir),
        "settings": ["3d-B"],
        "seeds": [0],
        # scale 0 short, the last scale long (100 iterations): the requeue lands mid-scale
        "overrides": {"train.iterations_per_scale": 10, "train.finest_iterations_factor": 5},
        "preprocessed_dir": str(root / "preprocessed"),
        "out_dir": f"{name}/models",
        "work_dir": f"{name}/work",
        "logs_dir": f"{name}/logs",
        "results_dir": f"{name}/results",
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"study": spec, "executor": executor}))
    return path


def wait_for(condition, timeout: float, what: str, process=None) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"ctgan study ended (status {process.returncode}) before {what}")
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def test_array_on_slurm_with_a_requeue_equals_a_serial_run(slurm_cluster, tmp_path):
    data = tmp_path / "phantom"
    write_phantom_dataset(data, scans=4, seed=1, size=64)
    slurm = {"kind": "slurm", "slurm": {"cpus_per_job": 1, "time_min": 20, "poll_s": 1}}
    study_path = write_study_file(tmp_path, "cluster", data, slurm)
    study = load_study(study_path)
    log = (tmp_path / "study.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "ctgan.cli", "study", str(study_path)],
        env={**slurm_cluster, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: (study.preprocessed_dir).is_dir(), 120, "preprocessing", process)
        wait_for(
            lambda: len(list(study.preprocessed_dir.glob("*/meta.json"))) == 4, 120, "4 pyramids"
        )
        jobs = expand_jobs(study, scan_list(study))
        assert len({job.scan for job in jobs}) == 4
        target = jobs[0]
        checkpoint = Path(target.work_root) / f"{target.name}-{target.key}" / "checkpoint.pt"
        wait_for(checkpoint.is_file, 300, "the first scale of job 0", process)
        assert not Path(target.model_dir).exists(), "job 0 finished before it could be requeued"
        log_text = Path(target.log_path).read_text
        wait_for(lambda: "scale 0 done" in log_text(), 60, "job 0's scale 0 in its log", process)
        array = subprocess.run(
            ["squeue", "-h", "-o", "%F"], env=slurm_cluster, capture_output=True, text=True
        ).stdout.split()[0]
        task = f"{array}_0"
        # cancel mid-run and requeue: SIGTERM (which submitit ignores), SIGKILL after slurm.conf's
        # KillWait (2 s), and the task is back in the queue; it reruns and resumes
        requeue = subprocess.run(
            ["scontrol", "requeue", task], env=slurm_cluster, capture_output=True, text=True
        )
        assert requeue.returncode == 0, requeue.stderr
        # a requeued task waits for a begin time about two minutes ahead: start it when pending
        state = ["squeue", "-h", "-j", task, "-o", "%T"]

        def pending() -> bool:
            queue = subprocess.run(state, env=slurm_cluster, capture_output=True, text=True)
            return "PENDING" in queue.stdout

        wait_for(pending, 60, f"task {task} back in the queue", process)
        start_now = ["scontrol", "update", f"JobId={task}", "StartTime=now"]
        subprocess.run(start_now, env=slurm_cluster, check=False)
        assert not Path(target.model_dir).exists(), "job 0 finished before it was cancelled"
        assert process.wait(timeout=900) == 0, (tmp_path / "study.log").read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    job_log = Path(target.log_path).read_text()
    assert job_log.count("scale 0 done") == 1, job_log  # scale 0 was not trained twice
    assert "resuming" in job_log and "after scale 0" in job_log, job_log
    assert job_log.count("scale 1 done") == 1

    # the same jobs, one after the other in one local worker with one thread
    serial = write_study_file(
        tmp_path,
        "serial",
        data,
        {"kind": "local", "local": {"workers": 1, "threads_per_worker": 1}},
    )
    from ctgan.executors import run_study

    paths = run_study(serial)
    cluster_table = (study.results_dir / "results.tsv").read_text()
    serial_table = paths["results"].read_text()
    assert len(cluster_table.splitlines()) == 5  # header + a row per scan
    assert cluster_table == serial_table  # bitwise: every metric of every scan
