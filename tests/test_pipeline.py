"""The whole pipeline, `dvc repro`, in the smoke profile, in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [f"{m}-{s}" for m in ("3d", "2d") for s in "ABCD"]


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in out.stdout.splitlines() if line and (ROOT / line).is_file()]


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    for name in tracked_files():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["data"]["phantom_scans"] = 2
    params["data"]["phantom_size"] = 64
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = pipeline_env()
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"],
    ):
        subprocess.run(cmd, cwd=repo, env=env, check=True)
    return repo


def pipeline_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


@pytest.mark.slow
def test_dvc_repro_runs_the_whole_smoke_pipeline(smoke_repo):
    env = pipeline_env()
    result = run([str(Path(sys.executable).parent / "dvc"), "repro"], smoke_repo, env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    for name in SETTINGS:
        assert list((smoke_repo / "models" / name).glob("seed*/checkpoint.pt")), name
        metrics = json.loads((smoke_repo / "metrics" / f"{name}.json").read_text())
        for key in ("mse", "psnr", "ssim"):
            assert key in metrics["reconstruction"], (name, key)
    baseline = json.loads((smoke_repo / "metrics" / "gpnn.json").read_text())
    assert baseline["model"] == "gpnn" and baseline["timing"]["seconds_per_sample"] > 0
    assert (smoke_repo / "models" / "gpnn" / "samples.npz").is_file()
    downstream = json.loads((smoke_repo / "metrics" / "downstream.json").read_text())
    assert {r["arm"] for r in downstream["runs"]} == {"real", "real+synthetic", "synthetic"}
    assert (smoke_repo / "reports" / "downstream" / "downstream.png").is_file()
    report = (smoke_repo / "reports" / "ablation.md").read_text()
    assert downstream["verdict"] in report and "figures/downstream.png" in report
    assert "22.639" in report and "41.967" in report  # the paper's numbers beside ours
    assert "| A |" in report and "| D |" in report

    again = run([str(Path(sys.executable).parent / "dvc"), "repro"], smoke_repo, env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Running stage" not in again.stdout, again.stdout[-2000:]

    params = yaml.safe_load((smoke_repo / "params.yaml").read_text())
    params["settings"]["3d-B"]["iterations_per_scale"] = 2
    (smoke_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = run([str(Path(sys.executable).parent / "dvc"), "repro"], smoke_repo, env)
    assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-4000:]
    ran = set(re.findall(r"Running stage '([^']+)'", rerun.stdout))
    # check_params tracks the whole params.yaml: it reruns too, and its fixed output reruns nothing
    # the downstream test judges 3d-B's volumes: it reruns with it
    assert ran == {"check_params", "train@3d-B", "evaluate@3d-B", "downstream", "report"}, ran
