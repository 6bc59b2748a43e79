"""The synth corpus: MusicNet's on-disk layout, rendered from music21's bundled scores with a GM soundfont.

Modules: ``catalogue`` (which scores, which orchestrations, the seeded plan), ``score`` (music21 -> humanised notes),
``render`` (soundfont rendering, WAV/CSV writing), ``timbre`` (per-recording timbres, the held-out family and the
sidecar that records them), ``effects`` (EQ and reverb), ``build`` (the process-pool build and the train/test split).
"""
from jtm.data.synth.build import METADATA_COLUMNS, CorpusSummary, build_corpus, split_pieces
from jtm.data.synth.render import LABEL_COLUMNS, check_soundfont, default_soundfont, render
from jtm.data.synth.score import SYNTH_RATE, PieceNotes, SynthNote
from jtm.data.synth.timbre import Timbre, heldout_timbre_ids, piece_of, read_recordings

__all__ = [
    "build_corpus", "CorpusSummary", "split_pieces", "METADATA_COLUMNS", "LABEL_COLUMNS", "check_soundfont",
    "default_soundfont", "render", "SYNTH_RATE", "PieceNotes", "SynthNote", "Timbre", "heldout_timbre_ids",
    "piece_of", "read_recordings",
]
