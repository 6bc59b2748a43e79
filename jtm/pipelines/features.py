"""Frozen front-end features of whole recordings, computed once and cached on disk.

Every probe, learning rate and seed of a study reads the same frozen features, so they are computed once per
(front end, recording) and kept as ``CACHE/<key>/<track id>.npy``: float32 (F, D), F = samples // 160, from
sample 0 of the recording. ``key`` is a digest of the front end's configuration, its weights and the layer
read, so a changed encoder never meets stale features; ``CACHE/<key>/frontend.json`` says what it is.
Files are written atomically and read back memory-mapped (``allow_pickle=False``), so the resident set grows
with what a probe touches, not with the cache.

Layers: ``context`` (c), ``encoder`` (z) or ``both`` (z and c concatenated, (F, De + Dc)) of a CPC encoder,
computed by :meth:`CPCEncoder.embed` (chunked, recurrent state carried across chunks); the log-mel front end
caches its un-normalised spectrogram (standardisation belongs to the probe, fitted on the label subset).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from jtm.data.store import Store
from jtm.fileio import atomic_path, write_json_atomic
from jtm.models.config import FEATURE_LAYERS
from jtm.models.cpc import CPCEncoder
from jtm.models.logmel import LogMel



def frontend_key(frontend: CPCEncoder | LogMel, layer: str) -> str:
    """A digest naming the features ``frontend`` computes at ``layer``: config + weights + layer."""
    digest = hashlib.sha1()
    digest.update(type(frontend).__name__.encode())
    digest.update(json.dumps(frontend.config.to_dict(), sort_keys=True).encode())
    digest.update(layer.encode())
    for name, tensor in sorted(frontend.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def compute_features(frontend: CPCEncoder | LogMel, audio: np.ndarray, sample_rate: int, layer: str) -> np.ndarray:
    """Features of one whole recording: float32 (len(audio) // 160, D)."""
    if isinstance(frontend, LogMel):
        frontend.eval()
        return frontend.spectrogram(torch.from_numpy(audio).unsqueeze(0))[0].numpy()
    return frontend.embed(audio, sample_rate, layer=layer)


class FeatureCache:
    """Per-recording features of one front end over one store, computed on first use and kept on disk."""

    def __init__(self, root: str | Path, store: Store, frontend: CPCEncoder | LogMel, layer: str = "context",
                 name: str = "") -> None:
        if layer not in FEATURE_LAYERS:
            raise ValueError(f"layer must be one of {FEATURE_LAYERS}, got {layer!r}")
        self.store, self.frontend, self.layer = store, frontend.eval(), layer
        self.dir = Path(root) / frontend_key(frontend, layer)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.dir / "frontend.json", {"name": name, "kind": type(frontend).__name__,
                                                       "layer": layer, "config": frontend.config.to_dict()})
        self._ids = store.tracks["id"].astype(str).to_numpy()
        self.computed = 0
        """Recordings this instance had to compute (the rest came from disk)."""

    def path(self, track: int) -> Path:
        return self.dir / f"{self._ids[track]}.npy"

    def __call__(self, track: int) -> np.ndarray:
        """Features of store track ``track``: float32 (F, D), memory-mapped read-only."""
        path = self.path(track)
        if not path.is_file():
            feats = compute_features(self.frontend, self.store.audio(int(track)), self.store.sample_rate, self.layer)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, np.ascontiguousarray(feats, dtype=np.float32), allow_pickle=False)
            self.computed += 1
        return np.load(path, mmap_mode="r", allow_pickle=False)
