"""Where does pitch live in a gabor CPC model? A closed-form probe of every layer, for diagnosis.

For each model, reads the transcription task's recordings of a store (the study's splits: validation carved
first, then ``--seeds`` label subsets of ``--fraction``), computes every layer's frames on the first
``--max-seconds`` of each recording, fits a ridge regression from standardised features to the 128-pitch roll
(its penalty chosen on validation from a log grid) and prints the test frame AP per layer as JSON:

- ``spectrum``: the log gabor filterbank (n_filters), what the frame-rate layers read;
- ``block1``, ``block2`` (= z): the frame-rate layers;
- ``c``: the context network; ``zc``: [z, c]; ``sc``: [spectrum, c] (what context adds to the spectrum).

Models: a pretraining RUN folder (or its ``encoder/``), ``random:RUN`` (the same architecture at its initial
weights, seed 0) or ``logmel`` (the study's log-mel front end). Ridge is not the study's protocol (Adam probes,
lr chosen on validation, 300 steps), but it is seconds per layer and ranks front ends as the study does
(docs/RESULTS.md, section 6). Usage::

    python scripts/probe_layers.py --store STORE --models logmel,random:RUN,RUN [--fraction 0.1 --seeds 3]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from jtm.audio import HOP
from jtm.data.store import Store
from jtm.data.subsets import LabelledSplits
from jtm.data.tasks import frame_roll, task_data
from jtm.evaluation.metrics import ranking_average_precision
from jtm.models.cpc import CPCEncoder
from jtm.models.logmel import LogMel, LogMelConfig
from jtm.training.config import PretrainConfig

PENALTIES = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
Layers = Callable[[np.ndarray], dict[str, np.ndarray]]


def cpc_layers(model: CPCEncoder) -> Layers:
    """audio (T,) -> {layer: (T // 160, D)} for a gabor CPC model."""
    if model.config.encoder != "gabor":
        raise SystemExit(f"{model.config.encoder!r} encoder: this diagnosis reads the gabor encoder's layers")

    @torch.no_grad()
    def layers(audio: np.ndarray) -> dict[str, np.ndarray]:
        x = model.encoder.spectrum(torch.from_numpy(audio).float().unsqueeze(0))
        out = {"spectrum": x}
        for i, block in enumerate(model.encoder.blocks, 1):
            x = block(x)
            out[f"block{i}"] = x
        c, _ = model.contextualise(x)
        out.update(c=c, zc=torch.cat([x, c], dim=-1), sc=torch.cat([out["spectrum"], c], dim=-1))
        return {k: v[0].numpy() for k, v in out.items()}

    return layers


def load_layers(spec: str) -> Layers:
    """A model named as on the command line (see the module docstring) -> its layer function."""
    if spec == "logmel":
        logmel = LogMel(LogMelConfig()).eval()
        return lambda audio: {"logmel": logmel.spectrogram(torch.from_numpy(audio).float().unsqueeze(0))[0].numpy()}
    if spec.startswith("random:"):
        run = Path(spec[len("random:"):])
        torch.manual_seed(0)
        config = PretrainConfig.from_dict(json.loads((run / "run.json").read_text()), run / "run.json").model
        return cpc_layers(CPCEncoder(config).eval())
    path = Path(spec)
    return cpc_layers(CPCEncoder.from_pretrained(path / "encoder" if (path / "encoder").is_dir() else path).eval())


def read(store: Store, layers: Layers, tracks: np.ndarray, max_frames: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every layer's frames of ``tracks`` stacked (N, D), with their pitch rolls (N, 128)."""
    feats: dict[str, list[np.ndarray]] = {}
    rolls = []
    for t in tracks:
        by_layer = layers(store.audio(int(t))[:max_frames * HOP])
        n = min(len(next(iter(by_layer.values()))), max_frames)
        for name, x in by_layer.items():
            feats.setdefault(name, []).append(x[:n])
        rolls.append(frame_roll(store, int(t), "transcription")[:n])
    return {k: np.concatenate(v) for k, v in feats.items()}, np.concatenate(rolls)


def ridge_ap(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
             test: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Ridge from standardised features (+ bias) to the roll, penalty chosen on validation frame AP."""
    mean, std = train[0].mean(0), train[0].std(0) + 1e-5
    design = lambda x: np.c_[(x - mean) / std, np.ones(len(x))]
    a = design(train[0])
    gram, cross = a.T @ a, a.T @ train[1].astype(np.float64)
    best: tuple[float, float, np.ndarray] | None = None
    for penalty in PENALTIES:
        w = np.linalg.solve(gram + penalty * len(a) / 1000 * np.eye(len(gram)), cross)
        score = ranking_average_precision(val[1], design(val[0]) @ w)
        if best is None or score > best[0]:
            best = (score, penalty, w)
    assert best is not None
    score, penalty, w = best
    return {"val_ap": round(score, 4), "test_ap": round(ranking_average_precision(test[1], design(test[0]) @ w), 4),
            "penalty": penalty}


def probe(store: Store, spec: str, splits: list[LabelledSplits], max_frames: int) -> dict[str, object]:
    layers = load_layers(spec)
    val, test = read(store, layers, splits[0].val, max_frames), read(store, layers, splits[0].test, max_frames)
    per_seed = []
    for split in splits:
        train = read(store, layers, split.train, max_frames)
        per_seed.append({k: ridge_ap((train[0][k], train[1]), (val[0][k], val[1]), (test[0][k], test[1]))
                         for k in train[0]})
    return {layer: {"test_ap_mean": round(float(np.mean([s[layer]["test_ap"] for s in per_seed])), 4),
                    "seeds": [s[layer] for s in per_seed]} for layer in per_seed[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--models", required=True, help="comma-separated: RUN, random:RUN, logmel")
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    args = parser.parse_args()
    store = Store.open(args.store)
    splits = [task_data(store, "transcription", args.fraction, 0, args.val_fraction, subset_seed=s).splits
              for s in range(args.seeds)]
    max_frames = int(args.max_seconds * store.sample_rate) // HOP
    for spec in args.models.split(","):
        print(json.dumps({"model": spec, "fraction": args.fraction, "seeds": args.seeds,
                          "layers": probe(store, spec, splits, max_frames)}), flush=True)


if __name__ == "__main__":
    main()
