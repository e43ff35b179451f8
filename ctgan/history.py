"""history.tsv: one row per logged training iteration, written as training goes.

The file is appended row by row (flushed), so a crashed run keeps its curves; on resume the rows
of unfinished scales are dropped and the rest is written again.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from ctgan.io import atomic_write

HISTORY_NAME = "history.tsv"
HISTORY_COLUMNS = (
    "step",
    "scale",
    "iteration",
    "d_loss",
    "g_adv",
    "reconstruction",
    "projection",
    "segmentation",
    "noise_amplitude",
    "rec_psnr",
)

Row = dict[str, float]


class HistoryWriter:
    """history.tsv written row by row (flushed), so that a crashed run keeps its curves."""

    def __init__(self, path: Path, keep: pd.DataFrame | None) -> None:
        self.path = path
        with atomic_write(path) as tmp:
            frame = keep if keep is not None else pd.DataFrame(columns=list(HISTORY_COLUMNS))
            frame.to_csv(tmp, sep="\t", index=False)
        self.rows: list[Row] = [] if keep is None else keep.to_dict("records")

    def append(self, row: Row) -> None:
        self.rows.append(row)
        with self.path.open("a", encoding="utf-8", newline="") as handle:
            csv.writer(handle, delimiter="\t").writerow([row[c] for c in HISTORY_COLUMNS])

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(HISTORY_COLUMNS))


def read_history(model_dir: str | Path) -> pd.DataFrame:
    """The history.tsv of a seed folder as a DataFrame (columns ``HISTORY_COLUMNS``)."""
    path = Path(model_dir) / HISTORY_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; train the model first (notebooks/03_train)")
    return pd.read_csv(path, sep="\t")
