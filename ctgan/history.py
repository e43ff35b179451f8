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
    """history.tsv written row by row (flushed), so that a crashed run keeps its curves.

    Every row goes through the same ``csv.writer`` (floats as ``repr``, NaN as ``nan``); on
    resume the kept rows are copied as text, so the file ends byte-identical to an uninterrupted
    run's."""

    def __init__(self, path: Path, keep_scales: int = 0) -> None:
        """Start ``path`` afresh, or keep the rows of scales ``< keep_scales`` already in it."""
        self.path = path
        kept = _complete_rows(path, keep_scales) if keep_scales > 0 and path.is_file() else []
        with atomic_write(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as handle:
            csv.writer(handle, delimiter="\t", lineterminator="\n").writerow(HISTORY_COLUMNS)
            handle.writelines(kept)
        self.rows: list[Row] = [] if not kept else read_history(path.parent).to_dict("records")

    def append(self, row: Row) -> None:
        self.rows.append(row)
        with self.path.open("a", encoding="utf-8", newline="") as handle:
            csv.writer(handle, delimiter="\t", lineterminator="\n").writerow(
                [row[c] for c in HISTORY_COLUMNS]
            )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(HISTORY_COLUMNS))


def _complete_rows(path: Path, scales: int) -> list[str]:
    """The text lines of ``path`` (header excluded) of scales ``< scales``; a line cut short by a
    crash (fewer fields, no newline) is dropped."""
    scale_index = HISTORY_COLUMNS.index("scale")
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True)[1:]:
        fields = line.rstrip("\r\n").split("\t")
        if not line.endswith("\n") or len(fields) != len(HISTORY_COLUMNS):
            continue
        try:
            scale = int(fields[scale_index])
        except ValueError:
            continue
        if scale < scales:
            kept.append(line)
    return kept


def read_history(model_dir: str | Path) -> pd.DataFrame:
    """The history.tsv of a seed folder as a DataFrame (columns ``HISTORY_COLUMNS``)."""
    path = Path(model_dir) / HISTORY_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; train the model first (notebooks/03_train)")
    return pd.read_csv(path, sep="\t")
