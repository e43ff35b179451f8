"""ctgan.study, ctgan.study_results, ctgan.executors: spec expansion, config hash, skip when
finished, the atomic model folder, the aggregated table. Fast: no training (train_model and the
evaluation are replaced where a job would run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from ctgan import study as st
from ctgan.executors import _submit_local, executor_settings
from ctgan.io import write_json
from ctgan.study_results import flatten_metrics, results_table, summary_table, write_results

REPO = Path(__file__).resolve().parents[1]


def write_study(tmp_path: Path, data_dir: Path, **study) -> Path:
    spec = {
        "base_params": str(REPO / "params.yaml"),
        "profile": "smoke",
        "data_dir": str(data_dir),
        "settings": ["3d-B"],
        "seeds": [0],
        **study,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"study": spec, "executor": {"kind": "local"}}))
    return path


@pytest.fixture
def study(tmp_path: Path, tiny_phantom: Path) -> st.Study:
    return st.load_study(
        write_study(
            tmp_path,
            tiny_phantom,
            settings=["3d-B", "3d-C"],
            seeds=[0, 1],
            grid={"train.lr": [0.001, 0.002], "train.g_steps": [1, 2]},
            overrides={"train.iterations_per_scale": 3},
        )
    )


def test_grid_points_are_every_combination_in_order():
    assert st.grid_points({}) == [{}]
    assert st.grid_points({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 2, "b": "x"},
        {"a": 2, "b": "y"},
    ]


def test_set_dotted_creates_sections_and_refuses_a_value_as_section():
    params = {"train": {"lr": None}, "profile": "cpu"}
    st.set_dotted(params, "train.lr", 0.1)
    st.set_dotted(params, "settings.3d-B.iterations_per_scale", 7)
    assert params["train"]["lr"] == 0.1 and params["settings"]["3d-B"]["iterations_per_scale"] == 7
    with pytest.raises(ValueError, match="'profile' is not a section"):
        st.set_dotted(params, "profile.x", 1)


def test_expand_jobs_is_scans_x_settings_x_grid_x_seeds(study, tiny_phantom):
    uids = st.scan_list(study)
    assert len(uids) == 2
    jobs = st.expand_jobs(study, uids, with_keys=False)
    assert len(jobs) == 2 * 2 * 4 * 2
    assert len({job.name for job in jobs}) == len(jobs)
    job = next(j for j in jobs if j.grid_point == {"train.lr": 0.002, "train.g_steps": 2})
    cfg = job.config()
    assert (cfg.train.lr, cfg.train.g_steps, cfg.train.iterations_per_scale) == (0.002, 2, 3)
    assert cfg.data.seriesuid == job.scan and cfg.data.source == "phantom"
    assert cfg.profile == "smoke" and job.name.startswith(job.scan)
    assert Path(job.model_dir).parent == study.out_dir and "-g3-seed" in job.name
    # one pyramid folder per scan: the grid does not change the pyramid config
    assert len({j.pyramid_dir for j in jobs}) == 2


def test_scan_list_names_a_missing_scan(tmp_path, tiny_phantom):
    study = st.load_study(write_study(tmp_path, tiny_phantom, scans=["1.2.3"]))
    with pytest.raises(ValueError, match="1 seriesuid\\(s\\) not in .* e.g. '1.2.3'"):
        st.scan_list(study)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"settings": ["3d-Z"]}, "unknown setting '3d-Z'"),
        ({"seeds": ["a"]}, "study.settings and study.seeds must be non-empty lists"),
        ({"settings": []}, "study.settings and study.seeds must be non-empty lists"),
        ({"grid": {"train.lr": []}}, "study.grid must map dotted params keys to non-empty lists"),
        ({"colour": 1}, "unknown key\\(s\\) \\['colour'\\]"),
    ],
)
def test_load_study_rejects_bad_sections(tmp_path, tiny_phantom, change, message):
    with pytest.raises(ValueError, match=message):
        st.load_study(write_study(tmp_path, tiny_phantom, **change))


def test_load_study_missing_files(tmp_path, tiny_phantom):
    with pytest.raises(FileNotFoundError, match="study file .* not found"):
        st.load_study(tmp_path / "nope.yaml")
    path = write_study(tmp_path, tiny_phantom, base_params=str(tmp_path / "none.yaml"))
    with pytest.raises(FileNotFoundError, match="study.base_params .* not found"):
        st.load_study(path)
    path.write_text(yaml.safe_dump({"experiment": {}}))
    with pytest.raises(ValueError, match="must have a 'study' section"):
        st.load_study(path)


def test_job_key_follows_config_seed_and_scan_data(study, tmp_path):
    cfg = st.expand_jobs(study, st.scan_list(study), with_keys=False)[0].config()
    pyramid = tmp_path / "pyr"
    pyramid.mkdir()
    (pyramid / "pyramid.npz").write_bytes(b"one")
    key = st.job_key(cfg, 0, pyramid, None, 0)
    assert key == st.job_key(cfg, 0, pyramid, None, 0)
    assert key != st.job_key(cfg, 1, pyramid, None, 0)
    assert key != st.job_key(cfg, 0, pyramid, None, 1)
    other = st.resolve_config(
        {**study.base_params, "train": {"lr": 0.123}}, setting="3d-B", profile="smoke"
    )
    assert key != st.job_key(other, 0, pyramid, None, 0)
    (pyramid / "pyramid.npz").write_bytes(b"two")
    assert key != st.job_key(cfg, 0, pyramid, None, 0)


def fake_job(tmp_path: Path, name: str = "scan1__3d-B-seed0", key: str = "k1", **kw) -> st.StudyJob:
    values = {
        "name": name,
        "scan": name.split("__")[0],
        "setting": "3d-B",
        "seed": 0,
        "grid_point": {},
        "params": yaml.safe_load((REPO / "params.yaml").read_text()),
        "profile": "smoke",
        "pyramid_dir": str(tmp_path / "pyr"),
        "model_dir": str(tmp_path / "models" / name),
        "work_root": str(tmp_path / "work"),
        "log_path": str(tmp_path / "logs" / f"{name}.log"),
        "segmenter": None,
        "sampling_seed": 0,
        "key": key,
        **kw,
    }
    return st.StudyJob(**values)


def finish(job: st.StudyJob, metrics: dict) -> None:
    folder = Path(job.model_dir)
    folder.mkdir(parents=True)
    write_json(folder / st.METRICS_FILE, metrics)
    write_json(folder / st.MARKER, job.record())


def test_a_finished_folder_of_the_same_key_is_skipped(tmp_path, monkeypatch):
    job = fake_job(tmp_path)
    assert not st.is_finished(job)
    finish(job, {"reconstruction": {"psnr": 1.0}})
    assert st.is_finished(job)
    assert not st.is_finished(fake_job(tmp_path, key="k2"))
    monkeypatch.setattr(st, "_train_and_publish", lambda *a: pytest.fail("trained again"))
    assert st.run_job(job) == job.model_dir


def test_run_job_needs_a_key(tmp_path):
    with pytest.raises(ValueError, match="has no key; build jobs with expand_jobs"):
        st.run_job(fake_job(tmp_path, key=""))


def patch_training(monkeypatch, fail: bool = False) -> list:
    """train_model writes a checkpoint-like file (or raises); evaluation returns fixed metrics."""
    import ctgan.evaluate
    import ctgan.preprocess
    import ctgan.train

    calls = []

    def train_model(cfg, pyramid, out_dir, seed, segmenter=None, callbacks=()):
        calls.append(Path(out_dir))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "checkpoint.pt").write_text("scales")
        if fail:
            raise KeyboardInterrupt("killed mid-run")

    pyramid = SimpleNamespace(volumes=[np.zeros((2, 2, 2))], spacings_zyx_mm=[(1.0, 1.0, 1.0)])
    monkeypatch.setattr(ctgan.train, "train_model", train_model)
    monkeypatch.setattr(ctgan.train, "load_trained", lambda folder, device: "model")
    monkeypatch.setattr(ctgan.preprocess, "load_pyramid", lambda folder: pyramid)
    monkeypatch.setattr(
        ctgan.evaluate, "evaluate_trained", lambda *a: {"reconstruction": {"psnr": 2.5}}
    )
    return calls


def test_a_job_publishes_its_folder_only_when_complete(tmp_path, monkeypatch):
    job = fake_job(tmp_path)
    stale = Path(job.work_root) / f"{job.name}-oldkey"
    stale.mkdir(parents=True)
    calls = patch_training(monkeypatch, fail=True)
    with pytest.raises(KeyboardInterrupt):
        st.run_job(job, threads=1)
    work = Path(job.work_root) / f"{job.name}-{job.key}"
    assert calls == [work] and not stale.exists()
    assert not Path(job.model_dir).exists() and (work / "checkpoint.pt").is_file()
    patch_training(monkeypatch)
    assert st.run_job(job, threads=1) == job.model_dir
    assert st.is_finished(job) and not work.exists()
    assert json.loads((Path(job.model_dir) / st.METRICS_FILE).read_text())["reconstruction"] == {
        "psnr": 2.5
    }
    assert "finished" in Path(job.log_path).read_text()


def test_segmentation_setting_without_segmenter_is_refused(tmp_path, monkeypatch):
    patch_training(monkeypatch)
    job = fake_job(tmp_path, name="scan1__3d-D-seed0", setting="3d-D")
    with pytest.raises(
        ValueError, match="uses the segmentation term but the study has no segmenter"
    ):
        st.run_job(job)


def test_aggregate_rows_and_mean_sd(tmp_path):
    jobs = [fake_job(tmp_path, name=f"scan{i}__3d-B-seed0", key=f"k{i}") for i in range(3)]
    values = [1.0, 2.0, 4.5]
    for job, value in zip(jobs, values, strict=True):
        finish(job, {"reconstruction": {"psnr": value}, "per_sample": {"chest_like": [1.0, 0.0]}})
    table = results_table(jobs)
    assert list(table["scan"]) == ["scan0", "scan1", "scan2"]
    assert list(table["reconstruction.psnr"]) == values and "per_sample.chest_like" not in table
    summary = summary_table(table)
    row = summary.iloc[0]
    assert (row.metric, row.n) == ("reconstruction.psnr", 3)
    assert row["mean"] == np.mean(values) and row["sd"] == np.std(values, ddof=1)
    paths = write_results(jobs, tmp_path / "results")
    again = pd.read_csv(paths["results"], sep="\t")
    assert list(again["reconstruction.psnr"]) == values  # floats round-trip exactly
    summary_json = json.loads(paths["summary_json"].read_text())
    assert summary_json["groups"]["3d-B"]["reconstruction.psnr"]["n"] == 3


def test_aggregate_names_unfinished_jobs(tmp_path):
    jobs = [fake_job(tmp_path, name=f"scan{i}__3d-B-seed0") for i in range(2)]
    finish(jobs[0], {"reconstruction": {"psnr": 1.0}})
    shutil.rmtree(tmp_path / "models" / jobs[0].name)
    finish(jobs[0], {"reconstruction": {"psnr": 1.0}})
    with pytest.raises(FileNotFoundError, match="1 of 2 jobs have not finished \\(scan1__3d-B"):
        results_table(jobs)
    with pytest.raises(FileNotFoundError, match="holds no finished run of job"):
        from ctgan.study_results import job_row

        job_row(jobs[1])


def test_flatten_metrics_drops_per_sample():
    assert flatten_metrics({"a": {"x": 1}, "per_sample": {"y": [1]}}) == {"a.x": 1.0}


def test_executor_settings_defaults_and_errors():
    kind, settings = executor_settings(None)
    assert kind == "local" and settings == {"workers": 1, "threads_per_worker": 2}
    kind, settings = executor_settings({"kind": "slurm", "slurm": {"partition": "gpu"}})
    assert kind == "slurm" and settings["partition"] == "gpu" and settings["time_min"] == 240
    with pytest.raises(ValueError, match="executor.kind must be one of local, slurm; got 'pbs'"):
        executor_settings({"kind": "pbs"})
    with pytest.raises(ValueError, match="unknown key\\(s\\) \\['gpus'\\] in executor.local"):
        executor_settings({"local": {"gpus": 1}})
    with pytest.raises(ValueError, match="unknown key\\(s\\) \\['queue'\\] in executor;"):
        executor_settings({"queue": 1})
    with pytest.raises(ValueError, match="workers and threads_per_worker must be >= 1; got 0, 1"):
        _submit_local([], {"workers": 0, "threads_per_worker": 1}, Path("/tmp"))


def test_a_rewritten_scan_gets_a_new_pyramid_folder(tmp_path, tiny_phantom):
    data = tmp_path / "data"
    shutil.copytree(tiny_phantom, data)
    study = st.load_study(write_study(tmp_path, data))
    uid = st.scan_list(study)[0]
    cfg = st.expand_jobs(study, [uid], with_keys=False)[0].config()
    files = st.scan_files(data)
    assert {p.suffix for p in files[uid]} >= {".mhd"} and files["annotations"]
    before = st.pyramid_folder(study, uid, cfg.pyramid)
    assert before == st.pyramid_folder(study, uid, cfg.pyramid, files)
    header = next(p for p in files[uid] if p.suffix == ".mhd")
    header.write_text(header.read_text() + "\n")
    assert st.pyramid_folder(study, uid, cfg.pyramid) != before


def test_ancestor_watch_up_to_the_submitter():
    import os

    from ctgan.runlock import AncestorWatch

    watch = AncestorWatch.up_to(os.getppid())
    assert [pid for pid, _, _ in watch.chain] == [os.getppid()]
    assert AncestorWatch.up_to(-5).chain == []


def test_cli_study_reports_a_missing_file(tmp_path, capsys):
    from ctgan.cli import main

    assert main(["study", str(tmp_path / "none.yaml")]) == 2
    assert "study file" in capsys.readouterr().err


def test_run_jobs_names_the_jobs_that_did_not_finish(tmp_path):
    from ctgan.executors import run_jobs

    # fails in its worker: a segmentation setting and no segmenter
    job = fake_job(tmp_path, name="scan1__3d-D-seed0", setting="3d-D")
    settings = {"workers": 1, "threads_per_worker": 1}
    with pytest.raises(RuntimeError, match="1 of 1 jobs did not finish \\(scan1__3d-D-seed0\\)"):
        run_jobs([job], "local", settings, tmp_path / "submitit")
    assert "failed" in (text := Path(job.log_path).read_text()) and "segmentation term" in text


def test_cli_study_reports_unfinished_jobs_with_status_1(monkeypatch, capsys):
    import ctgan.executors
    from ctgan.cli import main

    def fail(path, kind=None):
        raise RuntimeError("2 of 4 jobs did not finish")

    monkeypatch.setattr(ctgan.executors, "run_study", fail)
    assert main(["study", "x.yaml", "--executor", "slurm"]) == 1
    assert "ctgan study: error: 2 of 4 jobs did not finish" in capsys.readouterr().err
