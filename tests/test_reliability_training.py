"""Reliability of a long training, round two (issue 17): a resumed history is byte-identical, two
trainers never share a run folder, a training started by DVC stops when DVC is gone, progress
reads well in a log."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_pipeline import pipeline_env, smoke_repo  # noqa: F401 (a fixture)
from test_train import run, synthetic_pyramid, tiny_config

from ctgan.config import scale_shapes
from ctgan.history import HISTORY_NAME
from ctgan.progress import LogProgress, progress_bar
from ctgan.runlock import AncestorWatch, RunFolderBusy, RunFolderLock, TrainingOrphaned
from ctgan.train_stage import train_stage

ROOT = Path(__file__).resolve().parents[1]


class Stop(Exception):
    pass


def stop_at(scale: int):
    def callback(row):
        if row["scale"] == scale:
            raise Stop

    return callback


@pytest.mark.parametrize("setting", ["3d-B", "3d-D"])  # 3d-B: the segmentation column is nan
def test_history_after_resume_is_byte_identical(tmp_path: Path, setting: str) -> None:
    cfg = tiny_config(setting)
    run(cfg, tmp_path / "whole")
    with pytest.raises(Stop):
        run(cfg, tmp_path / "resumed", callbacks=[stop_at(1)])
    run(cfg, tmp_path / "resumed")
    whole = (tmp_path / "whole" / HISTORY_NAME).read_bytes()
    assert (tmp_path / "resumed" / HISTORY_NAME).read_bytes() == whole
    if setting == "3d-B":
        assert b"\tnan\t" in whole


def test_resume_drops_a_half_written_last_row(tmp_path: Path) -> None:
    cfg = tiny_config("3d-B")
    run(cfg, tmp_path / "whole")
    with pytest.raises(Stop):
        run(cfg, tmp_path / "resumed", callbacks=[stop_at(1)])
    with (tmp_path / "resumed" / HISTORY_NAME).open("a") as handle:
        handle.write("3\t1\t1\t0.5")  # killed in the middle of a row
    run(cfg, tmp_path / "resumed")
    whole = (tmp_path / "whole" / HISTORY_NAME).read_bytes()
    assert (tmp_path / "resumed" / HISTORY_NAME).read_bytes() == whole


HOLD = textwrap.dedent(
    """
    import sys, time
    from ctgan.runlock import RunFolderLock
    with RunFolderLock(sys.argv[1], "3d-B seed 0"):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_a_second_trainer_in_the_same_run_folder_is_refused_naming_the_pid(tmp_path: Path):
    cfg = tiny_config("3d-B")
    work_root = tmp_path / "work"
    work_root.mkdir()
    lock_path = work_root / ".3d-B-seed0.lock"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        pyramid = synthetic_pyramid(scale_shapes(cfg.pyramid))
        with pytest.raises(
            RunFolderBusy,
            match=rf"another training of 3d-B seed 0 is running in {work_root} \(PID "
            rf"{holder.pid}, .*\); wait for it to end or stop it \(kill {holder.pid}\), then "
            rf"rerun",
        ):
            train_stage(cfg, pyramid, tmp_path / "out", work_root)
        assert not (tmp_path / "out" / "seed0").exists()
        assert not list(work_root.glob("3d-B-seed0-*"))  # nothing was started or discarded
    finally:
        holder.kill()
        holder.wait()
    train_stage(cfg, synthetic_pyramid(scale_shapes(cfg.pyramid)), tmp_path / "out", work_root)
    assert (tmp_path / "out" / "seed0" / "checkpoint.pt").is_file()


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lock_path = tmp_path / ".lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunFolderBusy), RunFolderLock(lock_path, "x"):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunFolderLock(lock_path, "x"):
        pass


# A fake `dvc` (its command line names dvc) that starts a fake papermill, which starts a fake
# kernel watching its ancestors; killing the fake dvc with SIGKILL must stop the kernel.
KERNEL = textwrap.dedent(
    """
    import os, sys, time
    from ctgan.runlock import AncestorWatch
    watch = AncestorWatch.for_pipeline()
    print(os.getpid(), watch.describe(), flush=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        watch.check(min_interval_s=0)
        time.sleep(0.05)
    """
)
MIDDLE = "import subprocess, sys; sys.exit(subprocess.call([sys.executable, '-c', sys.argv[1]]))"


def test_a_training_started_by_dvc_stops_when_dvc_is_killed(tmp_path: Path):
    fake_dvc = tmp_path / "dvc"
    fake_dvc.write_text(f"#!{sys.executable}\n{MIDDLE}\n")
    fake_dvc.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    dvc = subprocess.Popen(
        [
            str(fake_dvc),
            f"import subprocess, sys; subprocess.call([sys.executable, '-c', {KERNEL!r}])",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert dvc.stdout is not None and dvc.stderr is not None
    first = dvc.stdout.readline().split(maxsplit=1)
    kernel_pid = int(first[0])
    assert f"dvc (PID {dvc.pid})" in first[1]
    dvc.send_signal(signal.SIGKILL)
    dvc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and Path(f"/proc/{kernel_pid}").exists():
        time.sleep(0.1)
    gone = not Path(f"/proc/{kernel_pid}").exists() or _is_zombie(kernel_pid)
    if not gone:
        os.kill(kernel_pid, signal.SIGKILL)
    assert gone, "the kernel kept running after dvc was killed"
    assert "TrainingOrphaned" in dvc.stderr.read()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_the_ancestor_watch_raises_naming_the_process(monkeypatch):
    watch = AncestorWatch([(12345678, 1, "dvc")])  # a PID that does not exist
    with pytest.raises(
        TrainingOrphaned,
        match=r"dvc \(PID 12345678\), which started this training, is gone; stopping",
    ):
        watch.check(min_interval_s=0)
    assert AncestorWatch.for_pipeline().describe() == "no dvc process above this one: not watched"


def test_progress_in_a_log_prints_lines_with_iteration_losses_and_time_left(caplog):
    clock = iter(range(0, 1000, 3))  # 3 s per iteration
    progress = LogProgress(
        range(40), "3d-B scale 1", percent_step=25, seconds=1e9, clock=lambda: float(next(clock))
    )
    with caplog.at_level(logging.INFO, logger="ctgan.progress"):
        for i in progress:
            progress.set_postfix(d=f"{i / 10:.2f}", psnr="20.1")
        progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert (
        lines[0]
        == "3d-B scale 1: iteration 1/40 (2%), d=0.00 psnr=20.1, 3 s elapsed, about 1 min 57 s left"
    )
    assert [line.split(":")[1].split("(")[0].strip() for line in lines] == [
        "iteration 1/40",
        "iteration 10/40",
        "iteration 20/40",
        "iteration 30/40",
        "iteration 40/40",
    ]
    assert lines[-1].endswith("done in 2 min 00 s")


def test_progress_in_a_log_also_prints_every_n_seconds(caplog):
    clock = iter(range(0, 10000, 50))  # 50 s per iteration
    progress = LogProgress(
        range(1000), "slow", percent_step=50, seconds=120, clock=lambda: float(next(clock))
    )
    with caplog.at_level(logging.INFO, logger="ctgan.progress"):
        for i, _ in enumerate(progress):
            if i == 10:
                break
    steps = [r.getMessage().split(":")[1].split("(")[0].strip() for r in caplog.records]
    assert steps == [
        "iteration 1/1000",
        "iteration 4/1000",
        "iteration 7/1000",
        "iteration 10/1000",
    ]


def test_progress_bar_is_tqdm_on_a_terminal_and_lines_in_a_log(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(progress_bar(range(3), "x"), LogProgress)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert not isinstance(progress_bar(range(3), "x"), LogProgress)


@pytest.mark.slow
def test_killing_dvc_stops_its_training_and_the_rerun_resumes_cleanly(
    smoke_repo: Path,  # noqa: F811 (the fixture imported from test_pipeline)
) -> None:
    """The issue's reproduction, for real: `dvc repro train@3d-B` (smoke profile, 40 iterations
    per scale so that it runs long enough), SIGKILL to dvc at the first progress line of scale 1;
    the orphaned kernel stops, the rerun resumes and ends with the uninterrupted history's rows."""
    params = yaml.safe_load((smoke_repo / "params.yaml").read_text())
    params["settings"]["3d-B"]["iterations_per_scale"] = 40
    (smoke_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = str(Path(sys.executable).parent / "dvc")
    env = pipeline_env()
    prepared = subprocess.run(
        [dvc, "repro", "segmenter"], cwd=smoke_repo, env=env, capture_output=True, text=True
    )
    assert prepared.returncode == 0, prepared.stdout[-3000:] + prepared.stderr[-3000:]
    process = subprocess.Popen(
        [dvc, "repro", "train@3d-B"],
        cwd=smoke_repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    log = []
    for line in process.stdout:
        log.append(line)
        if "3d-B scale 1/1: iteration" in line:
            break
    text = "".join(log)
    assert re.search(r"3d-B scale 0/1: iteration 8/40 \(20%\), d=\S+ g_adv=\S+ rec=\S+ psnr=", text)
    assert "left" in text and "watching" in text and "dvc (PID" in text
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _kernels(smoke_repo):
        time.sleep(0.5)
    assert not _kernels(smoke_repo), "the training kept running after dvc was killed"
    rerun = subprocess.run(
        [dvc, "repro", "train@3d-B"], cwd=smoke_repo, env=env, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "resuming" in rerun.stdout + rerun.stderr
    history = pd.read_csv(smoke_repo / "models" / "3d-B" / "seed0" / "history.tsv", sep="\t")
    assert history["step"].tolist() == list(range(40 + 80))


def _kernels(repo: Path) -> list[int]:
    """PIDs of processes still training in ``repo`` (the papermill kernel of train@3d-B)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
                cwd = os.readlink(proc / "cwd")
            except OSError:
                continue
            if b"ipykernel" in cmdline and cwd.startswith(str(repo)):
                found.append(int(proc.name))
    return found
