"""Where a study's jobs run: submitit's local executor on this machine, or a SLURM job array.

The study file's ``executor:`` section picks one (``kind: local | slurm``):

- ``local``: ``workers`` processes (submitit ``LocalExecutor``), each with ``threads_per_worker``
  torch threads (the cores split between them). Every worker walks the whole job list and takes
  the next job no other worker holds (the job's lock, ``ctgan.runlock.RunFolderLock``).
- ``slurm``: one array task per unfinished job (submitit ``SlurmExecutor``): ``partition``,
  ``gpus_per_job``, ``cpus_per_job`` (also the task's torch threads), ``mem_gb``, ``time_min``,
  ``array_parallelism``. On a timeout or preemption submitit requeues the task
  (``Checkpointable``); a requeued or rerun task resumes after its last finished scale.

:func:`run_jobs` blocks until every job has ended and raises naming the failed ones.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import submitit

from ctgan.runlock import AncestorWatch, RunFolderBusy
from ctgan.study import StudyJob, is_finished, run_job

log = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm")
LOCAL_DEFAULTS: dict[str, Any] = {"workers": 1, "threads_per_worker": 2}
SLURM_DEFAULTS: dict[str, Any] = {
    "partition": None,
    "gpus_per_job": 0,
    "cpus_per_job": 1,
    "mem_gb": None,
    "time_min": 240,
    "array_parallelism": 64,
    "poll_s": 5.0,
}


def executor_settings(section: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """``(kind, settings)`` from a study file's ``executor:`` section, defaults filled in."""
    section = dict(section or {})
    kind = section.pop("kind", "local")
    if kind not in EXECUTORS:
        raise ValueError(f"executor.kind must be one of {', '.join(EXECUTORS)}; got {kind!r}")
    defaults = LOCAL_DEFAULTS if kind == "local" else SLURM_DEFAULTS
    given = dict(section.get(kind) or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in executor.{kind}; valid: {', '.join(defaults)}"
        )
    extra = sorted(set(section) - set(EXECUTORS))
    if extra:
        raise ValueError(f"unknown key(s) {extra} in executor; valid: kind, local, slurm")
    return kind, {**defaults, **given}


class LocalWorker(submitit.helpers.Checkpointable):
    """One local worker: every job no other worker holds, in order, with ``threads`` threads."""

    def __call__(self, jobs: Sequence[StudyJob], threads: int, submitter: int = 0) -> list[str]:
        # the study that started this worker: when it is gone (killed, Ctrl-C), stop too
        watch = AncestorWatch.up_to(submitter)
        log.info("local worker: %s", watch.describe())
        done = []
        for job in jobs:
            watch.check(0.0)
            try:
                done.append(run_job(job, threads, [lambda row: watch.check()]))
            except RunFolderBusy:
                log.info("job %s is held by another worker; next", job.name)
        return done


class SlurmTask(submitit.helpers.Checkpointable):
    """One array task: one job. ``checkpoint`` (Checkpointable's) resubmits the same call on a
    timeout or preemption; the rerun resumes from the job's scale checkpoints."""

    def __call__(self, job: StudyJob, threads: int) -> str:
        return run_job(job, threads)


def run_jobs(
    jobs: Sequence[StudyJob], kind: str, settings: dict[str, Any], folder: str | Path
) -> None:
    """Run the unfinished ``jobs`` on executor ``kind`` and wait; ``folder`` holds submitit's
    files (the pickled calls, each task's stdout/stderr)."""
    pending = [job for job in jobs if not is_finished(job)]
    log.info("%d of %d jobs to run (%s executor)", len(pending), len(jobs), kind)
    if not pending:
        return
    folder = Path(folder)
    if kind == "local":
        submitted = _submit_local(pending, settings, folder)
        _wait(submitted, None, settings.get("poll_s", 2.0))
    else:
        submitted = _submit_slurm(pending, settings, folder)
        _wait(submitted, submitted[0].job_id.split("_")[0], settings["poll_s"])
    failed = [job.name for job in pending if not is_finished(job)]
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {len(pending)} jobs did not finish ({', '.join(failed[:5])}); see "
            f"their logs in {Path(pending[0].log_path).parent} and submitit's files in {folder}, "
            f"then rerun: finished jobs are skipped"
        )


def _submit_local(pending: Sequence[StudyJob], settings: dict[str, Any], folder: Path) -> list:
    workers, threads = int(settings["workers"]), int(settings["threads_per_worker"])
    if workers < 1 or threads < 1:
        raise ValueError(
            f"executor.local.workers and threads_per_worker must be >= 1; got {workers}, {threads}"
        )
    executor = submitit.LocalExecutor(folder=folder / "%j")
    executor.update_parameters(timeout_min=7 * 24 * 60)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the workers inherit the environment at submission
    try:
        count = min(workers, len(pending))
        return [
            executor.submit(LocalWorker(), list(pending), threads, os.getpid())
            for _ in range(count)
        ]
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def _submit_slurm(pending: Sequence[StudyJob], settings: dict[str, Any], folder: Path) -> list:
    executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=30)
    parameters = {
        "time": int(settings["time_min"]),
        "cpus_per_task": int(settings["cpus_per_job"]),
        "array_parallelism": int(settings["array_parallelism"]),
        "job_name": "ctgan-study",
    }
    if settings["partition"]:
        parameters["partition"] = settings["partition"]
    if settings["gpus_per_job"]:
        parameters["gpus_per_node"] = int(settings["gpus_per_job"])
    if settings["mem_gb"]:
        parameters["mem"] = f"{int(settings['mem_gb'])}GB"
    executor.update_parameters(**parameters)
    threads = [int(settings["cpus_per_job"])] * len(pending)
    submitted = executor.map_array(SlurmTask(), list(pending), threads)
    log.info(
        "submitted SLURM array %s (%d tasks)", submitted[0].job_id.split("_")[0], len(submitted)
    )
    return submitted


def _wait(submitted: Sequence[Any], array_id: str | None, poll_s: float) -> None:
    """Until every submitit job has a result, or (SLURM) the array has left the queue for 60 s:
    a task killed without a result (cancelled, node lost) never gets one, and sacct may be absent."""
    gone_since = None

    def finished(job: Any) -> bool:  # SLURM: the result file only (job.done() would ask sacct)
        return job.paths.result_pickle.exists() if array_id is not None else job.done()

    while not all(finished(job) for job in submitted):
        if array_id is not None:
            queue = subprocess.run(
                ["squeue", "-h", "-j", array_id, "-o", "%i"], capture_output=True, text=True
            )
            if queue.returncode == 0 and not queue.stdout.strip():
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since > 60:
                    log.warning("array %s left the queue with tasks lacking a result", array_id)
                    return
            else:
                gone_since = None
        time.sleep(poll_s)
    for job in submitted:
        if job.paths.result_pickle.exists() and job.exception() is not None:
            log.error("submitit job %s failed: %s", job.job_id, job.exception())


def run_study(path: str | Path, kind: str | None = None) -> dict[str, Path]:
    """Run a study file end to end: preprocess every scan once, run the unfinished jobs on the
    executor of its ``executor:`` section (``kind`` overrides ``executor.kind``), wait, and write
    the aggregated table (``ctgan.study_results``). Returns the table's paths."""
    from ctgan.study import expand_jobs, load_study, prepare_pyramids, scan_list
    from ctgan.study_results import write_results

    study = load_study(path)
    section = dict(study.executor)
    if kind is not None:
        section["kind"] = kind
    kind, settings = executor_settings(section)
    uids = scan_list(study)
    prepare_pyramids(study, uids)
    jobs = expand_jobs(study, uids)
    run_jobs(jobs, kind, settings, study.logs_dir / "submitit")
    return write_results(jobs, study.results_dir)
