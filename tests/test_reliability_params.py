"""params.yaml is validated as a whole on every run (issue 17, items 1 and 7).

Fast tests: ``config.validate_params`` and ``ctgan check-params``. Slow tests: real ``dvc repro``
in a smoke copy of the repository (the ``smoke_repo`` fixture of ``test_pipeline``)."""

from __future__ import annotations

import importlib.machinery
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from test_cli import run_cli
from test_config import params
from test_pipeline import pipeline_env, smoke_repo  # noqa: F401 (a fixture)

from ctgan.config import validate_params

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")


def test_the_repository_params_are_valid():
    assert validate_params(params()) == {"profile": "cpu", "settings": 8, "profiles": 3}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"profle": "paper"}, r"unknown key 'profle' in params.yaml; valid keys: profile, data"),
        ({"data.seriesuuid": "1.2"}, r"unknown key 'seriesuuid' in data; valid keys: source"),
        (
            {"settings.3d-E": {"terms": ["adversarial"]}},
            r"unknown key '3d-E' in settings; valid keys: 3d-A, 3d-B",
        ),
        ({"settings.2d-C.lrr": 0.1}, r"unknown key 'lrr' in settings.2d-C"),
        # a section of a profile that is not the active one
        ({"profiles.paper.train.itrations_per_scale": 3}, r"unknown key 'itrations_per_scale'"),
        ({"profile": "fast"}, r"profile must be one of smoke, cpu, paper; got 'fast'"),
        ({"loss_weights.wgangp.reconstrution": 1.0}, r"unknown key 'reconstrution'"),
    ],
)
def test_validate_params_checks_every_section_of_the_file(changes, match):
    with pytest.raises(ValueError, match=match):
        validate_params(params(**changes))


def test_check_params_command(capsys, tmp_path):
    code, out, err = run_cli(capsys, "check-params", ROOT / "params.yaml")
    assert code == 0, err
    assert out.strip() == f"{ROOT / 'params.yaml'}: valid (profile cpu, 8 settings, 3 profiles)"
    bad = tmp_path / "params.yaml"
    bad.write_text((ROOT / "params.yaml").read_text() + "\nprofle: paper\n")
    code, out, err = run_cli(capsys, "check-params", bad)
    assert code == 2
    assert err.strip().startswith("ctgan check-params: error: unknown key 'profle' in params")
    code, out, err = run_cli(capsys, "check-params", tmp_path / "nope.yaml")
    assert code == 2 and "params file" in err and "not found" in err


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DVC, *args], cwd=repo, env=pipeline_env(), capture_output=True, text=True, timeout=1800
    )


def edit_params(repo: Path, text: str) -> None:
    (repo / "params.yaml").write_text(text)


@pytest.mark.slow
def test_dvc_repro_validates_the_whole_params_file(
    smoke_repo: Path,  # noqa: F811 (the fixture imported from test_pipeline)
) -> None:
    """Up to the segmenter (every stage before the trainings): a typo anywhere in params.yaml
    stops `dvc repro` with the config's message; a valid file reruns only the check stage."""
    first = dvc(smoke_repo, "repro", "segmenter")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "Running stage 'check_params'" in first.stdout
    good = (smoke_repo / "params.yaml").read_text()
    with_setting = yaml.safe_load(good)
    with_setting["settings"]["3d-E"] = {"terms": ["adversarial"]}
    try:
        for text, message in [
            (good + "\nprofle: paper\n", "unknown key 'profle' in params.yaml"),
            (yaml.safe_dump(with_setting, sort_keys=False), "unknown key '3d-E' in settings"),
            (good.replace("seriesuid:", "seriesuuid:"), "unknown key 'seriesuuid' in data"),
        ]:
            edit_params(smoke_repo, text)
            result = dvc(smoke_repo, "repro", "segmenter")
            assert result.returncode != 0, result.stdout[-3000:]
            assert message in result.stdout + result.stderr, result.stdout[-3000:]
            assert not re.search(r"Running stage '(?!check_params)", result.stdout), result.stdout
        # a valid file again (plus a comment): the check reruns, no other stage does
        edit_params(smoke_repo, good + "\n# a comment\n")
        result = dvc(smoke_repo, "repro", "segmenter")
        assert result.returncode == 0, result.stdout[-3000:]
        assert re.findall(r"Running stage '([^']+)'", result.stdout) == ["check_params"]
        status = dvc(smoke_repo, "status", "segmenter")
        assert "changed" not in status.stdout, status.stdout
    finally:
        edit_params(smoke_repo, good)


@pytest.mark.slow
def test_unknown_profile_is_caught_before_any_stage_deletes_its_outputs(
    smoke_repo: Path,  # noqa: F811 (the fixture imported from test_pipeline)
) -> None:
    first = dvc(smoke_repo, "repro", "preprocess")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    notebook = smoke_repo / "reports" / "01_preprocess.ipynb"
    pyramid = smoke_repo / "data" / "preprocessed" / "pyramid.npz"
    assert notebook.is_file() and pyramid.is_file()
    good = (smoke_repo / "params.yaml").read_text()
    edit_params(smoke_repo, good.replace("profile: smoke", "profile: fast"))
    try:
        check_profile_refused(smoke_repo, notebook, pyramid)
    finally:
        edit_params(smoke_repo, good)


def check_profile_refused(repo: Path, notebook: Path, pyramid: Path) -> None:
    result = dvc(repo, "repro")
    assert result.returncode != 0
    assert "profile must be one of smoke, cpu, paper; got 'fast'" in result.stdout + result.stderr
    assert notebook.is_file() and pyramid.is_file(), "a stage deleted its outputs"
    # `make repro` checks first, outside DVC
    venv = Path(sys.executable).parents[1]
    make = subprocess.run(
        ["make", "-s", "check-params", f"VENV={venv}", "-o", f"{venv}/.ready"],
        cwd=repo,
        env=pipeline_env(),
        capture_output=True,
        text=True,
    )
    assert make.returncode != 0
    assert "profile must be one of smoke, cpu, paper; got 'fast'" in make.stderr


def load_repro_script():
    loader = importlib.machinery.SourceFileLoader("repro_script", str(ROOT / "scripts" / "repro"))
    module = types.ModuleType(loader.name)
    loader.exec_module(module)
    return module


def test_make_repro_summary_gives_stage_times_and_where_the_results_are():
    repro = load_repro_script()
    events = [
        (0.0, "Stage 'phantom' didn't change, skipping\n"),
        (1.0, "Running stage 'check_params':\n"),
        (2.0, "Running stage 'train@3d-B':\n"),
        (50.0, "INFO scale 0: 50% ...\n"),
        (3700.0, "Running stage 'report':\n"),
    ]
    ran = repro.stage_times(events, end=3725.0)
    assert ran == [("check_params", 1.0), ("train@3d-B", 3698.0), ("report", 25.0)]
    text = repro.summary(ran, ["phantom"], 0, 3725.0)
    assert "make repro finished in 1 h 02 min" in text
    assert re.search(r"train@3d-B\s+1 h 01 min", text)
    assert re.search(r"report\s+25 s", text)
    assert "up to date, not rerun: phantom" in text
    assert "report:             reports/ablation.md" in text
    assert "notebooks/explore.ipynb" in text
    failed = repro.summary(ran, [], 1, 10.0)
    assert "FAILED (exit status 1)" in failed and "reports/ablation.md" not in failed
