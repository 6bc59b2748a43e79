"""Reading a run's training logs back.

Each start of a run (the first and every resumption) writes its own CSV log version,
``RUN/logs/csv/version_N/metrics.csv``, because Lightning's CSV logger deletes an existing
``metrics.csv`` when it starts. :func:`read_metrics` stitches the versions into one history.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def metrics_csv_files(run_dir: str | Path) -> list[Path]:
    """The run's CSV logs, oldest first."""
    folder = Path(run_dir) / "logs" / "csv"
    files = [p / "metrics.csv" for p in folder.glob("version_*") if (p / "metrics.csv").is_file()]
    return sorted(files, key=lambda p: int(p.parent.name.split("_")[1]))


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    """One DataFrame of everything logged over all starts of a run (columns ``epoch``, ``step``, metrics).

    A resumed run repeats the steps after its last checkpoint; the later log wins for those steps.
    Raises FileNotFoundError when the run has no CSV log.
    """
    files = metrics_csv_files(run_dir)
    if not files:
        raise FileNotFoundError(f"{run_dir}: no training log (logs/csv/version_*/metrics.csv)")
    frames = []
    for i, path in enumerate(files):
        df = pd.read_csv(path)
        if df.empty:
            continue
        if frames and "step" in df:
            first = df["step"].min()
            frames = [f[f["step"] < first] for f in frames]
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["epoch", "step"])
