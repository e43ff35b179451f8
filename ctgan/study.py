"""Many trainings as one study: one model per scan, or settings x seeds x a parameter grid.

A study file (``studies/many-scans/params.yaml``) names a base params.yaml, the scans (``all`` of a
LUNA16-layout folder or a list of seriesuids), the settings, the seeds, overrides for every run and
a grid of overrides (dotted params.yaml keys, each with a list of values). :func:`expand_jobs` turns
it into :class:`StudyJob` s, one per (scan, setting, grid point, seed); each is a function of its
resolved config, its scan and its seed.

A job trains in ``work/<name>-<key>/`` (resumed after the last finished scale when it is rerun,
preempted or requeued), evaluates there, then is renamed to ``models/<name>/`` with ``study.json``
naming its key. ``key`` hashes the resolved config, the seed, the training code (as
``ctgan.train_stage.run_key``), the preprocessed scan and the evaluation settings: a model folder
holding the same key is finished and is never trained again. The executors (``ctgan.executors``)
only decide where :func:`run_job` runs; :func:`aggregate` reads the finished folders into one table.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ctgan.config import SETTINGS, Config, PyramidConfig, resolve_config
from ctgan.io import ensure_writable_dir, read_json, write_json
from ctgan.runlock import RunFolderLock

log = logging.getLogger(__name__)

_SCAN_SUFFIXES = (".mhd", ".raw", ".zraw", ".csv")
MARKER = "study.json"  # in a finished model folder: the job and its key
METRICS_FILE = "metrics.json"
_STUDY_KEYS = (
    "base_params",
    "profile",
    "data_dir",
    "scans",
    "settings",
    "seeds",
    "overrides",
    "grid",
    "segmenter",
    "sampling_seed",
    "out_dir",
    "work_dir",
    "preprocessed_dir",
    "logs_dir",
    "results_dir",
)


@dataclass(frozen=True)
class StudyJob:
    """One training of a study; every path is absolute (a shared filesystem on a cluster)."""

    name: str
    scan: str
    setting: str
    seed: int
    grid_point: dict[str, Any]
    params: dict[str, Any]  # the base params.yaml with this job's overrides and scan
    profile: str | None
    pyramid_dir: str
    model_dir: str
    work_root: str
    log_path: str
    segmenter: str | None
    sampling_seed: int
    key: str = ""

    def config(self) -> Config:
        return resolve_config(self.params, setting=self.setting, profile=self.profile)

    def record(self) -> dict[str, Any]:
        """What ``study.json`` keeps: the job without its (large) params."""
        return {k: v for k, v in asdict(self).items() if k != "params"}


@dataclass(frozen=True)
class Study:
    """A study file, its paths resolved against the file's folder."""

    root: Path
    base_params: dict[str, Any]
    profile: str | None
    data_dir: Path
    scans: list[str] | str  # "all" or seriesuids
    settings: list[str]
    seeds: list[int]
    overrides: dict[str, Any]
    grid: dict[str, list[Any]]
    segmenter: Path | None
    sampling_seed: int
    out_dir: Path
    work_dir: Path
    preprocessed_dir: Path
    logs_dir: Path
    results_dir: Path
    executor: dict[str, Any] = field(default_factory=dict)


def load_study(path: str | Path) -> Study:
    """Read a study file: its ``study:`` section and its ``executor:`` section."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"study file {path} not found; pass the path of the study's params.yaml"
        )
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    unknown = sorted(set(raw) - {"study", "executor", "phantom"})
    if unknown or "study" not in raw:
        raise ValueError(
            f"{path} must have a 'study' section (and may have 'executor', 'phantom'); "
            f"got sections {sorted(raw)}"
        )
    spec = raw["study"] or {}
    bad = sorted(set(spec) - set(_STUDY_KEYS))
    if bad:
        raise ValueError(f"unknown key(s) {bad} in {path} study:; valid: {', '.join(_STUDY_KEYS)}")
    root = path.resolve().parent

    def where(key: str, default: str) -> Path:
        return (root / str(spec.get(key) or default)).resolve()

    base_path = where("base_params", "../../params.yaml")
    if not base_path.is_file():
        raise FileNotFoundError(
            f"study.base_params {base_path} not found; point it at a params.yaml"
        )
    settings = list(spec.get("settings") or [])
    for name in settings:
        if name not in SETTINGS:
            raise ValueError(
                f"study.settings: unknown setting {name!r}; valid: {', '.join(SETTINGS)}"
            )
    seeds = spec.get("seeds", [0])
    if not settings or not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise ValueError(
            f"study.settings and study.seeds must be non-empty lists (seeds of integers); got "
            f"settings={settings!r}, seeds={seeds!r}"
        )
    grid = spec.get("grid") or {}
    if not all(isinstance(v, list) and v for v in grid.values()):
        raise ValueError(f"study.grid must map dotted params keys to non-empty lists; got {grid!r}")
    segmenter = spec.get("segmenter")
    return Study(
        root=root,
        base_params=yaml.safe_load(base_path.read_text(encoding="utf-8")) or {},
        profile=spec.get("profile"),
        data_dir=where("data_dir", "data/phantom"),
        scans=spec.get("scans", "all")
        if spec.get("scans", "all") == "all"
        else list(spec["scans"]),
        settings=settings,
        seeds=seeds,
        overrides=dict(spec.get("overrides") or {}),
        grid={str(k): list(v) for k, v in grid.items()},
        segmenter=None if not segmenter else (root / segmenter).resolve(),
        sampling_seed=int(spec.get("sampling_seed", 0)),
        out_dir=where("out_dir", "models"),
        work_dir=where("work_dir", "work"),
        preprocessed_dir=where("preprocessed_dir", "preprocessed"),
        logs_dir=where("logs_dir", "logs"),
        results_dir=where("results_dir", "results"),
        executor=dict(raw.get("executor") or {}),
    )


def set_dotted(params: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(p, "train.lr", 0.001)`` sets ``p["train"]["lr"]`` (creating sections)."""
    parts = key.split(".")
    node = params
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"override {key!r}: {part!r} is not a section of params.yaml")
        node = child
    node[parts[-1]] = value


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values (one empty point for an empty grid), in order."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def scan_list(study: Study) -> list[str]:
    """The study's seriesuids: every scan of ``data_dir`` for ``all``, else the listed ones."""
    from ctgan.luna16 import Luna16Folder

    available = Luna16Folder(study.data_dir).seriesuids()
    if study.scans == "all":
        return list(available)
    missing = [uid for uid in study.scans if uid not in available]
    if missing:
        raise ValueError(
            f"study.scans: {len(missing)} seriesuid(s) not in {study.data_dir}, e.g. {missing[0]!r}; "
            f"it holds {len(available)} scans"
        )
    return list(study.scans)


def scan_files(data_dir: Path) -> dict[str, list[Path]]:
    """Every file of a LUNA16-layout folder by name stem (a scan's .mhd/.raw, its lung mask),
    listed once for the whole study."""
    index: dict[str, list[Path]] = {}
    for path in sorted(data_dir.rglob("*")):
        suffix = next((s for s in _SCAN_SUFFIXES if path.name.endswith(s)), None)
        if suffix is not None and path.is_file():
            index.setdefault(path.name.removesuffix(suffix), []).append(path)
    return index


def pyramid_folder(
    study: Study, uid: str, pyramid: PyramidConfig, files: dict[str, list[Path]] | None = None
) -> Path:
    """Where one scan's pyramid for one pyramid config lives (shared by every job on it). The name
    hashes the pyramid config and the size and modification time of the scan's files and of
    annotations.csv, so a rewritten scan is preprocessed again (cheap: no file is read)."""
    files = scan_files(study.data_dir) if files is None else files
    stats = [
        (str(p.relative_to(study.data_dir)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in [*files.get(uid, []), *files.get("annotations", [])]
    ]
    text = json.dumps({"pyramid": asdict(pyramid), "files": stats}, sort_keys=True).encode()
    return study.preprocessed_dir / f"{uid}-{hashlib.sha256(text).hexdigest()[:8]}"


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def job_key(
    cfg: Config, seed: int, pyramid_dir: Path, segmenter: Path | None, sampling_seed: int
) -> str:
    """The config hash of a job: training (``run_key``), the preprocessed scan and evaluation."""
    from ctgan.preprocess import PYRAMID_FILE
    from ctgan.train_stage import run_key

    parts = {
        "run": run_key(cfg, seed),
        "pyramid": file_digest(pyramid_dir / PYRAMID_FILE),
        "segmenter": None if segmenter is None else file_digest(segmenter),
        "sampling_seed": sampling_seed,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def expand_jobs(study: Study, uids: Sequence[str], *, with_keys: bool = True) -> list[StudyJob]:
    """One job per (scan, setting, grid point, seed). ``with_keys`` needs the pyramids on disk
    (:func:`prepare_pyramids`); without it the jobs' keys are empty."""
    source = "phantom" if (study.data_dir / "phantom.json").is_file() else "luna16"
    points = grid_points(study.grid)
    files = scan_files(study.data_dir)
    jobs = []
    for uid, setting, (g, point), seed in itertools.product(
        uids, study.settings, enumerate(points), study.seeds
    ):
        params = copy.deepcopy(study.base_params)
        for key, value in {**study.overrides, **point}.items():
            set_dotted(params, key, value)
        params["data"] = {"source": source, "seriesuid": uid}
        cfg = resolve_config(params, setting=setting, profile=study.profile)
        pyramid_dir = pyramid_folder(study, uid, cfg.pyramid, files)
        label = f"-g{g}" if len(points) > 1 else ""
        name = f"{uid}__{setting}{label}-seed{seed}"
        job = StudyJob(
            name=name,
            scan=uid,
            setting=setting,
            seed=seed,
            grid_point=point,
            params=params,
            profile=study.profile,
            pyramid_dir=str(pyramid_dir),
            model_dir=str(study.out_dir / name),
            work_root=str(study.work_dir),
            log_path=str(study.logs_dir / f"{name}.log"),
            segmenter=None if study.segmenter is None else str(study.segmenter),
            sampling_seed=study.sampling_seed,
        )
        if with_keys:
            key = job_key(cfg, seed, pyramid_dir, study.segmenter, study.sampling_seed)
            job = StudyJob(**{**asdict(job), "key": key})
        jobs.append(job)
    return jobs


def prepare_pyramids(study: Study, uids: Sequence[str]) -> list[Path]:
    """Preprocess every scan once per pyramid config the jobs use, before the fan-out; a folder
    already written is kept. Each is written beside its final name, then renamed."""
    from ctgan.luna16 import Luna16Folder
    from ctgan.preprocess import META_FILE, preprocess_scan, save_pyramid

    folder = Luna16Folder(study.data_dir)
    done: list[Path] = []
    for job in expand_jobs(study, uids, with_keys=False):
        target = Path(job.pyramid_dir)
        if target not in done and not (target / META_FILE).is_file():
            cfg = job.config()
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            pyramid = preprocess_scan(folder, job.scan, cfg.pyramid, source=cfg.data.source)
            save_pyramid(pyramid, partial)
            os.replace(partial, target)
        if target not in done:
            done.append(target)
    return done


def is_finished(job: StudyJob) -> bool:
    """True when ``job.model_dir`` holds a finished run of the same key."""
    marker = Path(job.model_dir) / MARKER
    return marker.is_file() and read_json(marker).get("key") == job.key


def run_job(job: StudyJob, threads: int | None = None, callbacks: Sequence[Any] = ()) -> str:
    """Train, evaluate and publish one job (see the module docstring); returns its model folder.

    Logs to ``job.log_path`` (appended: a requeued job continues the same file). A second process
    on the same job raises ``ctgan.runlock.RunFolderBusy``. ``callbacks`` go to ``train_model``.
    """
    import torch

    if not job.key:
        raise ValueError(
            f"job {job.name} has no key; build jobs with expand_jobs(..., with_keys=True)"
        )
    if is_finished(job):
        return job.model_dir
    if threads:
        torch.set_num_threads(threads)
    handler = logging.FileHandler(
        ensure_writable_dir(Path(job.log_path).parent) / Path(job.log_path).name
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(min(previous, logging.INFO))
    try:
        work_root = ensure_writable_dir(job.work_root)
        with RunFolderLock(work_root / f".{job.name}.lock", job.name):
            if not is_finished(job):
                _train_and_publish(job, work_root, torch.get_num_threads(), callbacks)
    except Exception:  # into the job's own log too, not only the executor's stderr
        log.exception("job %s failed", job.name)
        raise
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()
    return job.model_dir


def _train_and_publish(
    job: StudyJob, work_root: Path, threads: int, callbacks: Sequence[Any] = ()
) -> None:
    from ctgan.evaluate import evaluate_trained
    from ctgan.preprocess import load_pyramid
    from ctgan.train import load_trained, resolve_device, train_model

    cfg = job.config()
    log.info(
        "job %s (key %s): %s seed %d, %d threads", job.name, job.key, cfg.setting, job.seed, threads
    )
    work = work_root / f"{job.name}-{job.key}"
    for stale in work_root.glob(f"{job.name}-*"):
        if stale != work:
            log.info("discarding %s (another config, scan or code version)", stale)
            shutil.rmtree(stale)
    segmenter = None
    device = str(resolve_device(cfg.train.device))
    if job.segmenter is not None:
        from ctgan.segmenter import load_segmenter

        segmenter = load_segmenter(job.segmenter, device)
    if cfg.uses("segmentation") and segmenter is None:
        raise ValueError(
            f"setting {cfg.setting} uses the segmentation term but the study has no segmenter; "
            f"set study.segmenter to a segmenter.pt (the main pipeline's models/segmenter)"
        )
    pyramid = load_pyramid(job.pyramid_dir)
    train_model(cfg, pyramid, work, job.seed, segmenter, callbacks)
    model = load_trained(work, device)
    real, spacing = pyramid.volumes[-1], tuple(pyramid.spacings_zyx_mm[-1])
    num_samples = cfg.evaluate.num_samples
    metrics = evaluate_trained(
        model, real, spacing, segmenter, num_samples, job.sampling_seed, device, False
    )
    write_json(work / METRICS_FILE, metrics)
    write_json(work / MARKER, job.record())
    final = Path(job.model_dir)
    if final.exists():
        shutil.rmtree(final)
    ensure_writable_dir(final.parent)
    os.replace(work, final)
    log.info("job %s finished: %s", job.name, final)
