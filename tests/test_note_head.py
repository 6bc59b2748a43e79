"""The note head: shapes, context, training on a tiny synthetic problem, files, and the standardisation fold."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jtm.errors import ModelFileError
from jtm.models.note_head import NoteHead, NoteLogits


@pytest.mark.parametrize("context", ["conv", "gru"])
def test_output_shapes(context: str) -> None:
    torch.manual_seed(0)
    head = NoteHead(in_dim=12, n_pitches=128, hidden=16, context=context)
    out = head(torch.randn(3, 40, 12))
    assert isinstance(out, NoteLogits)
    assert out.onset.shape == (3, 40, 128) and out.frame.shape == (3, 40, 128)
    onset, frame = head.probabilities(torch.randn(1, 7, 12))
    assert onset.shape == frame.shape == (1, 7, 128) and 0 <= float(onset.min()) and float(frame.max()) <= 1
    with pytest.raises(ValueError):
        head(torch.randn(3, 40, 11))
    with pytest.raises(ValueError):
        NoteHead(12, kernel=4)


def test_the_conv_head_sees_its_neighbours_and_no_further() -> None:
    """Two convolutions of width 5 per branch: frame t depends on frames t-4..t+4 and nothing beyond."""
    torch.manual_seed(0)
    head = NoteHead(in_dim=4, n_pitches=8, hidden=8, context="conv", layers=2, kernel=5, dropout=0.0).eval()
    x = torch.randn(1, 30, 4)
    base = head(x).onset[0, 15]
    for shift, changes in ((4, True), (-4, True), (5, False), (-6, False)):
        y = x.clone()
        y[0, 15 + shift] += 10.0
        assert (not torch.allclose(head(y).onset[0, 15], base)) == changes, shift


def _synthetic_batch(rng: np.random.Generator, batch: int = 8, frames: int = 48, dim: int = 6, pitches: int = 4):
    """Features that mark note starts and sustains of a few pitches, and their onset / frame targets."""
    onset = np.zeros((batch, frames, pitches), np.float32)
    frame = np.zeros((batch, frames, pitches), np.float32)
    for b in range(batch):
        for p in range(pitches):
            for s in rng.choice(frames - 8, size=2, replace=False):
                onset[b, s, p] = 1
                frame[b, s:s + 6, p] = 1
    x = np.concatenate([frame + 0.3 * rng.standard_normal(frame.shape), onset[..., :dim - pitches]], axis=-1)
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(onset), torch.from_numpy(frame)


def test_training_reduces_both_losses() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    head = NoteHead(in_dim=6, n_pitches=4, hidden=16, context="conv", dropout=0.0)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-2)
    x, onset, frame = _synthetic_batch(rng)

    def losses() -> tuple[float, float]:
        with torch.no_grad():
            out = head(x)
        return (float(F.binary_cross_entropy_with_logits(out.onset, onset)),
                float(F.binary_cross_entropy_with_logits(out.frame, frame)))

    before = losses()
    for _ in range(40):
        out = head(x)
        loss = (F.binary_cross_entropy_with_logits(out.onset, onset)
                + F.binary_cross_entropy_with_logits(out.frame, frame))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = losses()
    assert after[0] < 0.5 * before[0] and after[1] < 0.5 * before[1], (before, after)


def test_save_and_load_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    head = NoteHead(in_dim=10, hidden=8, context="gru").eval()
    head.save_pretrained(tmp_path / "head", {"thresholds": {"onset": 0.4, "frame": 0.3}})
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    assert config["format"] == "jtm-note-head" and config["config"]["head"]["context"] == "gru"
    loaded, extra = NoteHead.from_pretrained(tmp_path / "head")
    assert extra == {"thresholds": {"onset": 0.4, "frame": 0.3}}
    x = torch.randn(2, 9, 10)
    torch.testing.assert_close(loaded(x).frame, head(x).frame)
    (tmp_path / "head" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelFileError, match="model.safetensors"):
        NoteHead.from_pretrained(tmp_path / "head")
    with pytest.raises(ValueError):
        head.save_pretrained(tmp_path / "other", {"head": {}})


def test_folding_the_standardisation_keeps_the_outputs() -> None:
    torch.manual_seed(0)
    head = NoteHead(in_dim=5, hidden=8).eval()
    mean, std = torch.randn(5), torch.rand(5) + 0.5
    raw = torch.randn(1, 12, 5) * 3 + 1
    folded = head.fold_standardisation(mean, std)
    torch.testing.assert_close(folded(raw).onset, head((raw - mean) / std).onset, rtol=1e-4, atol=1e-4)


def test_a_hostile_note_head_config_is_refused_before_allocating(tmp_path) -> None:
    head = NoteHead(in_dim=8, hidden=8)
    head.save_pretrained(tmp_path / "head")
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    config["config"]["head"]["hidden"] = 10**9
    (tmp_path / "head" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="config.json.*too large"):
        NoteHead.from_pretrained(tmp_path / "head")


# ------------------------------------------------------------------------------- the note transcriber


def _transcriber(frontend: str, features: str = "context", context: str = "conv"):
    from jtm.models.config import CPCConfig
    from jtm.models.cpc import CPCEncoder
    from jtm.models.logmel import LogMel, LogMelConfig
    from jtm.models.note_transcriber import NoteThresholds, NoteTranscriber

    torch.manual_seed(0)
    front = (LogMel(LogMelConfig(n_mels=16, normalize=False)) if frontend == "logmel"
             else CPCEncoder(CPCConfig(encoder_dim=12, context_dim=8)))
    width = 16 if frontend == "logmel" else {"context": 8, "encoder": 12, "both": 20}[features]
    head = NoteHead(in_dim=width, hidden=8, context=context, layers=2, kernel=5)
    return NoteTranscriber(front, head, features, NoteThresholds(onset=0.4, sustain=0.3, frame=0.45)).eval()


@pytest.mark.parametrize("frontend,features", [("cpc", "context"), ("cpc", "encoder"), ("cpc", "both"),
                                               ("logmel", "encoder")])
def test_streamed_probabilities_equal_one_pass_over_the_whole_recording(frontend: str, features: str) -> None:
    """Chunked front end (margin, carried recurrent state) then the head with its receptive field on each side:
    the same onset and frame probabilities as one pass, from small chunks up to one chunk for all."""
    from jtm.models.inference import Chunking

    model = _transcriber(frontend, features)
    audio = (np.random.default_rng(1).standard_normal(160 * 437 + 33) * 0.3).astype(np.float32)
    onset, frame = model.probabilities(torch.from_numpy(audio)[None])
    assert onset.shape == frame.shape == (1, 437, 128)
    for core, batch in ((37, 3), (200, 1), (1000, 2)):
        margin = model.feature_functions()[2]
        chunking = Chunking(core=core, left=margin, right=margin, batch_size=batch, pad_end=False)
        parts = list(model.stream(audio, chunking))
        assert [p[0] for p in parts] == sorted(p[0] for p in parts)
        np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), onset[0].numpy(), atol=2e-5)
        np.testing.assert_allclose(np.concatenate([p[2] for p in parts]), frame[0].numpy(), atol=2e-5)


def test_the_note_transcriber_folder_round_trips_and_refuses_bad_files(tmp_path) -> None:
    from jtm.models.note_transcriber import NoteTranscriber

    model = _transcriber("cpc", "both")
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["format"] == "jtm-note-transcriber" and config["config"]["features"] == "both"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = NoteTranscriber.from_pretrained(tmp_path / "m")
    assert (loaded.thresholds.onset, loaded.thresholds.sustain, loaded.thresholds.frame) == (0.4, 0.3, 0.45)
    wave = torch.randn(2, 160 * 50)
    for a, b in zip(loaded.probabilities(wave), model.probabilities(wave)):
        torch.testing.assert_close(a, b)
        assert a.shape == (2, 50, 128)

    def refused(change, match: str) -> None:
        bad = json.loads(json.dumps(config))
        change(bad["config"])
        (tmp_path / "m" / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ModelFileError, match=match):
            NoteTranscriber.from_pretrained(tmp_path / "m")

    refused(lambda c: c["head"].update(hidden=10**9), "config.json.*hidden")
    refused(lambda c: c["head"].update(in_dim=7), "config.json.*7")
    refused(lambda c: c.update(extra=1), "unknown key 'extra'")
    refused(lambda c: c["thresholds"].update(onset=2.0), "config.json.*onset")
    refused(lambda c: c["frontend"].update(kind="wav2vec"), "wav2vec")
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x80\x04 a pickle, not safetensors")
    with pytest.raises(ModelFileError, match="model.safetensors"):
        NoteTranscriber.from_pretrained(tmp_path / "m")


def test_streaming_reads_a_bounded_way_ahead_of_its_outputs() -> None:
    """Bounded memory: the stream pulls at most one batch of front-end chunks, one block, and the head's context
    and block beyond the frames it has given out, however long the recording."""
    from jtm.models.inference import Chunking

    model = _transcriber("cpc", "context")
    audio = np.random.default_rng(2).standard_normal(160 * 6000).astype(np.float32)
    pulled, block = [0], 4000

    def blocks():
        for i in range(0, len(audio), block):
            pulled[0] += len(audio[i:i + block])
            yield audio[i:i + block]

    margin = model.feature_functions()[2]
    chunking = Chunking(core=300, left=margin, right=margin, batch_size=2, pad_end=False)
    ahead, given = [], 0
    for first, onset, _ in model.stream(blocks(), chunking):
        assert first == given
        given += len(onset)
        ahead.append(pulled[0] - given * 160)
    assert given == 6000 and pulled[0] == audio.size
    limit = (chunking.batch_size * chunking.window + model.head_context + 256) * 160 + block
    assert max(ahead[:-1]) <= limit
