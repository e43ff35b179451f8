"""The train stage: every seed of a setting, resumable across DVC reruns.

DVC deletes a stage's outputs before rerunning it, so a run in progress lives in a work folder
outside the outputs (``models/.partial/<setting>-seed<k>-<run_key>/``) and is moved into
``models/<model>-<setting>/seed<k>/`` when it finishes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd
from torch import nn

from ctgan.config import Config
from ctgan.io import ensure_writable_dir
from ctgan.runlock import AncestorWatch, RunFolderLock
from ctgan.train import (
    Callback,
    PyramidLike,
    resolve_device,
    resolve_training_precision,
    train_model,
)

logger = logging.getLogger(__name__)

# what a run depends on
_CODE = (
    "layers.py",
    "nets.py",
    "losses.py",
    "scale_trainer.py",
    "train.py",
    "checkpoint.py",
    "history.py",
)


def run_key(cfg: Config, seed: int) -> str:
    """A short hash of what determines a run: the resolved config, the seed and the training code
    (layers, nets, losses, scale_trainer, train, checkpoint, history). Two runs with the same key
    produce the same checkpoint."""
    code = b"".join((Path(__file__).parent / name).read_bytes() for name in _CODE)
    text = json.dumps({"config": cfg.training_dict(), "seed": int(seed)}, sort_keys=True).encode()
    return hashlib.sha256(text + code).hexdigest()[:12]


def train_stage(
    cfg: Config,
    pyramid: PyramidLike,
    out_dir: str | Path,
    work_root: str | Path,
    segmenter: nn.Module | None = None,
    callbacks: Iterable[Callback] = (),
) -> dict[str, pd.DataFrame]:
    """Train every seed of ``cfg`` into ``out_dir/seed<k>/`` so that an interrupted stage resumes.

    DVC deletes a stage's outputs before rerunning it, so the checkpoints of a run in progress
    live in ``work_root/<setting>-seed<k>-<run_key>/`` (outside the outputs); a rerun of the same
    config, seed and code resumes there after the last finished scale, and a finished seed is
    moved into ``out_dir``. Work folders of another config or code version are discarded.

    One trainer per setting and seed: a lock (``ctgan.runlock.RunFolderLock``) makes a second one
    refuse, naming the PID of the first. Under ``dvc repro`` the training stops
    (``TrainingOrphaned``) when the dvc process that started it is gone.
    """
    out_dir, work_root = ensure_writable_dir(out_dir), ensure_writable_dir(work_root)
    # precision auto: the work folder's key holds what this machine trains in (bf16 | float32)
    cfg = resolve_training_precision(cfg, resolve_device(cfg.train.device))
    watch = AncestorWatch.for_pipeline()
    logger.info("parent processes: %s", watch.describe())
    callbacks = [*callbacks, lambda row: watch.check()]
    histories = {}
    for k, seed_dir in iterate_seed_dirs(out_dir, cfg.train.seeds):
        lock = RunFolderLock(work_root / f".{cfg.setting}-seed{k}.lock", f"{cfg.setting} seed {k}")
        with lock:
            work = work_root / f"{cfg.setting}-seed{k}-{run_key(cfg, k)}"
            for stale in work_root.glob(f"{cfg.setting}-seed{k}-*"):
                if stale != work:
                    logger.info("discarding %s (another config or code version)", stale)
                    shutil.rmtree(stale)
            histories[f"seed{k}"] = train_model(cfg, pyramid, work, k, segmenter, callbacks)
            if seed_dir.exists():
                shutil.rmtree(seed_dir)
            os.replace(work, seed_dir)
    return histories


def iterate_seed_dirs(out_dir: str | Path, seeds: int) -> Iterator[tuple[int, Path]]:
    """``(k, out_dir/seed<k>)`` for k in 0 .. seeds-1 (the folders train_model writes into)."""
    for k in range(seeds):
        yield k, Path(out_dir) / f"seed{k}"
