"""The one chunked runner (``jtm.models.inference``): tiling, bounded streaming, exactness, and transcription
giving the very frame probabilities evaluation gives."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from jtm.audio import FRAME_RATE, HOP, SAMPLE_RATE
from jtm.models.config import CPCConfig
from jtm.models.cpc import CPCEncoder, embed_margin_frames
from jtm.models.downstream import DownstreamModel
from jtm.models.inference import Chunking, run_array, run_chunked
from jtm.models.logmel import LogMel

SMALL = dict(encoder_dim=16, context_dim=24)


def first_sample_of_each_frame(wave: torch.Tensor) -> torch.Tensor:
    """A frame model whose output for frame f is the frame's first sample: (B, T) -> (B, T // HOP, 1)."""
    frames = wave.shape[1] // HOP
    return wave[:, :frames * HOP].reshape(len(wave), frames, HOP)[:, :, :1]


def blocks_of(audio: np.ndarray, size: int):
    for i in range(0, len(audio), size):
        yield audio[i:i + size]


def test_frame_constants_are_defined_once() -> None:
    import jtm.data.labels as labels

    assert HOP == 160 and FRAME_RATE == SAMPLE_RATE / HOP == 100.0 and labels.HOP is HOP


@pytest.mark.parametrize("pad_end", [True, False])
@pytest.mark.parametrize("n_samples", [HOP * 5 + 7, HOP * 123, HOP * 301 + 159])
def test_cores_tile_the_global_frame_grid(pad_end: bool, n_samples: int) -> None:
    audio = np.arange(n_samples, dtype=np.float32)  # sample i holds i: outputs show where each frame came from
    chunking = Chunking(core=12, left=2, right=3, batch_size=3, pad_end=pad_end)
    seen: list[int] = []

    def model(wave: torch.Tensor) -> torch.Tensor:
        seen.extend([wave.shape[1]] * len(wave))
        return first_sample_of_each_frame(wave)

    whole = run_array(audio, model, chunking, 1)
    np.testing.assert_array_equal(whole[:, 0], np.arange(n_samples // HOP) * HOP)  # every frame once, in place
    assert max(seen) <= chunking.window * HOP
    if pad_end:
        assert set(seen) == {chunking.window * HOP}  # the model only ever sees full windows
    streamed = list(run_chunked(blocks_of(audio, 1000), first_sample_of_each_frame, chunking))
    assert [first for first, _ in streamed] == list(range(0, n_samples // HOP, 12))
    np.testing.assert_array_equal(np.concatenate([f for _, f in streamed]), whole)


def test_streaming_holds_one_batch_of_audio_not_the_file() -> None:
    block, pulled = 1000, [0]
    audio = np.random.default_rng(0).standard_normal(HOP * 3000).astype(np.float32)

    def stream():
        for piece in blocks_of(audio, block):
            pulled[0] += piece.size
            yield piece

    chunking = Chunking(core=96, left=16, right=16, batch_size=4)
    ahead = []
    for first, frames in run_chunked(stream(), first_sample_of_each_frame, chunking):
        ahead.append(pulled[0] - (first + len(frames)) * HOP)
    assert pulled[0] == audio.size
    # Read-ahead never exceeds one batch of chunks plus one block.
    assert max(ahead) <= chunking.batch_size * chunking.window * HOP + block


@pytest.mark.parametrize("encoder", ["conv", "gabor"])
def test_chunked_equals_one_pass_for_a_finite_receptive_field_and_a_carried_state(encoder: str) -> None:
    torch.manual_seed(0)
    model = CPCEncoder(CPCConfig(encoder=encoder, context="gru", **SMALL)).eval()
    audio = torch.randn(HOP * 250 + 77).numpy() * 0.1
    with torch.no_grad():
        z, c = (x[0].numpy() for x in model(torch.from_numpy(audio)[None]))
    margin = embed_margin_frames(model.config)
    chunking = Chunking(core=37, left=margin, right=margin, batch_size=2, pad_end=False)
    encode, step = model.chunk_functions("context")
    np.testing.assert_allclose(run_array(audio, encode, chunking, 16), z, atol=1e-5)
    # The recurrent state carried from chunk to chunk (across batches too) makes c exact as well.
    np.testing.assert_allclose(run_array(audio, encode, chunking, 24, step_fn=step), c, atol=1e-5)
    # Without the carried state (or any context), each chunk's GRU starts afresh at the seam: not the same.
    bare = Chunking(core=37, batch_size=2, pad_end=False)
    assert np.abs(run_array(audio, lambda w: model(w)[1], bare, 24) - c)[37].max() > 1e-2


def test_padded_chunks_equal_one_pass_for_a_finite_receptive_field() -> None:
    torch.manual_seed(0)
    model = DownstreamModel.build("transcription", LogMel(), probe="linear").eval()
    audio = np.random.default_rng(1).standard_normal(SAMPLE_RATE * 2 + 123).astype(np.float32) * 0.1
    with torch.no_grad():
        whole = torch.sigmoid(model(torch.from_numpy(audio)[None]))[0].numpy()
    chunked = run_array(audio, model.frame_probabilities, Chunking.for_window(2560, 4, 3), model.n_out)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_chunking_settings() -> None:
    assert Chunking.for_window(20480) == Chunking(core=96, left=16, right=16, batch_size=8)
    assert Chunking.for_window(2560, 100, 2) == Chunking(core=2, left=7, right=7, batch_size=2)  # >= 1 core frame
    assert Chunking.for_run({"window": 2560, "eval_context_frames": 3, "batch_size": 5}) == Chunking(10, 3, 3, 5)
    assert Chunking.for_run({"window": 2560, "batch_size": True}) == Chunking.for_window(2560)
    assert Chunking.for_run({"task": "transcription"}) is None
    assert Chunking.in_seconds(2.5, 0.3, batch_size=3) == Chunking(250, 30, 30, 3)
    with pytest.raises(ValueError, match="core"):
        Chunking(core=0)
    with pytest.raises(RuntimeError, match="frame model returned"):
        run_array(np.zeros(HOP * 10, np.float32), lambda w: w[:, None, :], Chunking(4), 1)


# ------------------------------------------------------------------------- transcription = evaluation


@pytest.mark.parametrize("reverse", [False, True])
def test_transcription_gives_the_frame_probabilities_evaluation_gives(prepared_store, tmp_path: Path,
                                                                     reverse: bool) -> None:
    """Same run, same audio: ``jtm transcribe`` of the file and ``jtm evaluate`` of the recording agree exactly.

    A reverse-mode context reads the future, so any difference in the right context a chunk sees (the first
    chunk's, or the last chunk's padding) changes its frames; with a forward context the batches must match.
    """
    from jtm.evaluation.notes import roll_to_notes
    from jtm.fileio import write_json_atomic
    from jtm.pipelines.evaluate import MIN_NOTE_FRAMES, evaluate_run
    from jtm.pipelines.transcribe import iter_probabilities, load_transcriber, transcribe_file
    from jtm.training.downstream import DownstreamConfig

    store, _ = prepared_store
    run = tmp_path / "run"
    torch.manual_seed(0)
    model = DownstreamModel.build("transcription", CPCEncoder(CPCConfig(reverse=reverse, **SMALL)), probe="linear")
    model.threshold = 0.5
    model.save_pretrained(run / "model")
    cfg = DownstreamConfig(data=str(store.path), out=str(run), task="transcription", window=2560, batch_size=3)
    write_json_atomic(run / "run.json", cfg.to_dict())

    metrics = evaluate_run(run, "test", excerpt_seconds=1e6, progress=False)
    with np.load(run / "excerpt.npz", allow_pickle=False) as saved:
        evaluated, track_id = saved["prob"], str(saved["track_id"])
    track = int(np.flatnonzero(store.tracks["id"].astype(str).to_numpy() == track_id)[0])
    assert metrics["n_frames"] == len(evaluated) == store.audio(track).size // HOP

    path = tmp_path / f"{track_id}.wav"
    sf.write(path, store.audio(track), store.sample_rate, subtype="FLOAT")
    tr = load_transcriber(run)
    assert tr.chunking() == Chunking(core=12, left=2, right=2, batch_size=3)  # the run's evaluation chunking
    transcribed = np.concatenate(list(iter_probabilities(tr, path)))
    np.testing.assert_array_equal(transcribed, evaluated)
    # ... so the transcribed notes are the evaluation's estimated notes.
    result = transcribe_file(tr, path, tmp_path / "out")
    assert result.n_notes == len(roll_to_notes(evaluated, 0.5, FRAME_RATE, min_frames=MIN_NOTE_FRAMES)) > 0


@pytest.mark.parametrize("min_block", [1, 7, 64, 10_000])
def test_a_second_stage_with_its_receptive_field_as_context_equals_one_pass(min_block: int) -> None:
    """run_with_context: a stack of zero-padded convolutions over a stream of frame blocks gives its outputs on
    the whole sequence at once, with the stream's ends padded as the convolutions pad them; one frame less of
    context than the receptive field is not exact."""
    from jtm.models.inference import run_with_context

    torch.manual_seed(0)
    stage = torch.nn.Sequential(torch.nn.Conv1d(3, 4, 5, padding=2), torch.nn.Tanh(),
                                torch.nn.Conv1d(4, 2, 3, padding=1))

    def frames_fn(x: torch.Tensor) -> torch.Tensor:  # (1, n, 3) -> (1, n, 2); receptive field 3 frames a side
        return stage(x.transpose(1, 2)).transpose(1, 2)

    x = np.random.default_rng(0).standard_normal((301, 3)).astype(np.float32)
    with torch.no_grad():
        whole = frames_fn(torch.from_numpy(x)[None])[0].numpy()
    blocks = [(s, x[s:s + 23]) for s in range(0, len(x), 23)]
    out = list(run_with_context(iter(blocks), frames_fn, 3, min_block=min_block))
    assert [f for f, _ in out] == list(np.cumsum([0] + [len(o) for _, o in out[:-1]]))
    np.testing.assert_allclose(np.concatenate([o for _, o in out]), whole, atol=1e-6)
    if min_block < len(x):
        short = np.concatenate([o for _, o in run_with_context(iter(blocks), frames_fn, 2, min_block=min_block)])
        assert not np.allclose(short, whole, atol=1e-6)
