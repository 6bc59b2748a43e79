"""What the study's feature cache buys: frozen CPC features computed once per recording, against computing them
again for every probe run.

Builds a small corpus with the project's own synth code (or uses ``--store``), a CPC encoder of the demo's
architecture (``--encoder gabor`` + GRU, 128 dimensions, initial weights: the cost does not depend on the weights),
and times:

- ``cold_seconds``: computing and writing the features of every recording (what the first probe run pays);
- ``warm_seconds``: reading all of them back from the cache (what every later probe run pays);
- ``probe_seconds``: one frozen linear-probe run of the study's protocol on the cached features (300 steps);
- ``runs_per_study``: probe runs that read one front end's features in a demo-sized study (2 tasks x 2
  fractions x (3 learning rates + 2 more seeds)), and the study time those runs take with and without the cache.

``study_seconds_uncached`` is a lower bound: it charges each run one pass over the recordings, while a run without
the cache would also recompute the validation features at every validation. Prints one JSON line. Usage:
``python benchmarks/feature_cache.py [--store STORE] [--minutes 4] [--encoder gabor|conv|sinc]``.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def run(store_path: str | None, minutes: float, encoder_kind: str = "gabor") -> dict[str, object]:
    from jtm.data.prepare import prepare_store
    from jtm.data.store import Store
    from jtm.data.synth import build_corpus
    from jtm.models.config import CPCConfig
    from jtm.models.cpc import CPCEncoder
    from jtm.pipelines.features import FeatureCache
    from jtm.pipelines.study import StudyConfig, _Frontends, run_cell

    tmp = Path(tempfile.mkdtemp(prefix="jtm-bench-cache-"))
    if store_path is None:
        build_corpus(tmp / "corpus", minutes=minutes, max_seconds=30, test_fraction=0.15, seed=0, progress=False)
        prepare_store(tmp / "corpus", tmp / "store", progress=False)
        store_path = str(tmp / "store")
    store = Store.open(store_path)
    torch.manual_seed(0)
    encoder = CPCEncoder(CPCConfig(encoder=encoder_kind, encoder_dim=128, context_dim=128, norm="batch"))
    encoder.save_pretrained(tmp / "pre" / "encoder")

    t0 = time.perf_counter()
    cache = FeatureCache(tmp / "study" / "cache", store, encoder, "context")
    for t in range(len(store)):
        cache(t)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = FeatureCache(tmp / "study" / "cache", store, encoder, "context")
    frames = sum(int(again(t).shape[0]) for t in range(len(store)))
    warm = time.perf_counter() - t0
    assert again.computed == 0

    cfg = StudyConfig(data=store_path, out=str(tmp / "study"), pretrained=str(tmp / "pre"), seeds=1, steps=300,
                      eval_every=50, patience=3, max_val_seconds=20.0)
    fronts = _Frontends(cfg, store, tmp / "study")
    t0 = time.perf_counter()
    run_cell(cfg, fronts, "transcription", "cpc-linear", 1.0, 0, 1e-2, tmp / "study" / "cell")
    probe = time.perf_counter() - t0

    runs = 2 * 2 * (3 + 2)
    return {
        "benchmark": "feature_cache", "encoder": encoder_kind, "n_tracks": len(store), "audio_minutes": round(frames / 100 / 60, 2),
        "cold_seconds": round(cold, 2), "warm_seconds": round(warm, 3), "probe_seconds": round(probe, 2),
        "runs_per_study": runs, "study_seconds_cached": round(cold + runs * probe, 1),
        "study_seconds_uncached": round(runs * (cold + probe), 1),
        "speedup": round(runs * (cold + probe) / (cold + runs * probe), 1),
        "threads": torch.get_num_threads(), "loadavg": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="A prepared store (default: synthesise one).")
    parser.add_argument("--minutes", type=float, default=4.0, help="Minutes of audio to synthesise.")
    parser.add_argument("--encoder", default="gabor", choices=("conv", "sinc", "gabor"), help="CPC front end.")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.store, args.minutes, args.encoder)), flush=True)


if __name__ == "__main__":
    main()
