"""A second view of each training window: the same moment in another rendering of the same piece.

``jtm data synth --renderings N`` renders every piece N times, each with its own timbre configuration, from one
note list, so the renderings of a work are aligned to the sample: samples [s, s + w) of one rendering and of
another hold the same notes, played by other instruments in another room. Multi-view pretraining
(``jtm pretrain --views renderings``) reads the context from one rendering and asks it to predict the frames of
another, so what InfoNCE rewards is what the renderings share: the notes, not the timbre.

Data code only: :class:`RenderingViews` maps tracks to the other renderings of their work (among one split) and
reads aligned windows; :class:`jtm.data.windows.WindowBatches` adds them to its batches as ``view``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from jtm.errors import DataError

if TYPE_CHECKING:  # the CLI imports VIEWS without the store's dependencies
    from jtm.data.store import Store

VIEWS = ("same", "renderings")
"""``jtm pretrain --views``: ``same`` (CPC: targets from the window itself) or ``renderings``."""


class RenderingViews:
    """The other renderings of each track's work among ``track_indices`` (store.work_keys groups them).

    A track with no other rendering is its own view. Raises DataError, naming the store, when no track has one:
    the corpus has one rendering per piece (build it with ``jtm data synth --renderings 2`` or more).
    """

    def __init__(self, store: Store, track_indices: np.ndarray) -> None:
        self.store = store
        tracks = np.asarray(track_indices, dtype=np.int64).reshape(-1)
        keys = store.work_keys(tracks)
        self.partners: dict[int, np.ndarray] = {}
        for t, key in zip(tracks.tolist(), keys.tolist()):
            same = tracks[(keys == key) & (tracks != t)]
            self.partners[int(t)] = np.sort(same) if len(same) else np.asarray([t], dtype=np.int64)
        if len(tracks) and not any(int(p[0]) != t for t, p in self.partners.items()):
            raise DataError(store.path, f"--views renderings needs pieces rendered more than once (jtm data synth "
                                        f"--renderings 2 or more); none of these {len(tracks)} recordings has "
                                        "another rendering of its work")

    def partner(self, track: int, start: int, epoch: int) -> int:
        """The rendering that gives ``track``'s window at ``start`` its view in ``epoch``: deterministic (so a
        resumed run reads the same views) and drawn independently for every window and epoch.

        Why a hash rather than ``(start // HOP + epoch) % n``: an epoch lays a track's windows on a grid
        (``start = offset + k * window``), so any rule linear in ``start`` gives every window of a track the same
        partner in an epoch, and a batch then sees one pairing of timbres per track instead of a mix.
        """
        options = self.partners[int(track)]
        return int(options[_mix(int(track), int(start), int(epoch)) % len(options)])

    def batch(self, tracks: np.ndarray, starts: np.ndarray, window: int, epoch: int) -> np.ndarray:
        """float32 (B, window) in [-1, 1): for each (track, start), samples [start, start + window) of a partner
        rendering, zero-padded where the partner is shorter (renderings differ only in their reverb tails)."""
        out = np.zeros((len(tracks), window), dtype=np.float32)
        for b, (t, s) in enumerate(zip(np.asarray(tracks).tolist(), np.asarray(starts).tolist())):
            samples = self.store.audio_int16(self.partner(t, s, epoch), s, s + window)
            out[b, :len(samples)] = samples
        out *= np.float32(1.0 / 32768.0)
        return out


_MASK = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A 64-bit hash of non-negative integers (splitmix64 finaliser): neighbouring inputs give unrelated outputs."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK
        h ^= h >> 29
    return h
