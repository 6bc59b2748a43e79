"""Metrics against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from jtm.evaluation.metrics import (
    classification_metrics,
    frame_average_precision,
    frame_f1_curve,
    frame_prf,
    note_prf,
    per_instrument_ap,
    ranking_average_precision,
    transcription_metrics,
    tune_threshold,
)
from jtm.evaluation.notes import make_notes


def _hand_example(p_a: int = 60, p_b: int = 64) -> tuple[np.ndarray, np.ndarray]:
    # 3 frames, two pitches (p_a, p_b) used, the other 126 columns silent with score 0.
    #            p_a          p_b
    # frame 0: true, 0.90   false, 0.10
    # frame 1: false, 0.40  true, 0.80
    # frame 2: true, 0.35   false, 0.60
    y_true = np.zeros((3, 128), dtype=bool)
    y_score = np.zeros((3, 128))
    y_true[[0, 2], p_a] = True
    y_true[1, p_b] = True
    y_score[:, p_a] = [0.90, 0.40, 0.35]
    y_score[:, p_b] = [0.10, 0.80, 0.60]
    return y_true, y_score


def test_average_precision_by_hand() -> None:
    y_true, y_score = _hand_example()
    # Micro AP pools all cells. Ranking of the nonzero scores: 0.9 T, 0.8 T, 0.6 F, 0.4 F, 0.35 T, 0.1 F (the 378
    # zero-score cells are all negatives ranked last and never reached before the last positive).
    # Precision at each positive: 1/1, 2/2, 3/5. AP = (1 + 1 + 0.6) / 3 = 2.6 / 3.
    assert frame_average_precision(y_true, y_score) == pytest.approx(2.6 / 3)


def test_average_precision_no_positive_is_nan() -> None:
    assert math.isnan(frame_average_precision(np.zeros((4, 128), bool), np.random.default_rng(0).random((4, 128))))


def test_ranking_average_precision_by_hand() -> None:
    y_true, y_score = _hand_example()
    assert ranking_average_precision(y_true, y_score) == pytest.approx(2.6 / 3)
    assert math.isnan(ranking_average_precision(np.zeros((4, 128), bool), np.ones((4, 128))))
    with pytest.raises(ValueError):
        ranking_average_precision(np.zeros((4, 2), bool), np.zeros((3, 2)))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_ranking_average_precision_equals_sklearn(seed: int, ties: bool) -> None:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(seed)
    shape = (300, 40)
    y_true = rng.random(shape) < 0.08
    # float32 scores, as the study's model outputs are: both implementations see the same values.
    y_score = rng.random(shape).astype(np.float32)
    if ties:
        # Few distinct scores, so that positives and negatives share thresholds; plus a block of exact zeros.
        y_score = (np.round(y_score * 7) / 7).astype(np.float32)
        y_score[:, :10] = 0.0
        assert len(np.unique(y_score)) <= 8
    else:
        assert len(np.unique(y_score)) > 0.99 * y_score.size
    expected = average_precision_score(y_true.ravel(), y_score.ravel())
    assert ranking_average_precision(y_true, y_score) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert ranking_average_precision(y_true, y_score) == pytest.approx(frame_average_precision(y_true, y_score),
                                                                       rel=1e-9, abs=1e-12)
    # Tied scores: the order of the cells inside a tie must not matter.
    perm = rng.permutation(y_true.size)
    assert ranking_average_precision(y_true.ravel()[perm], y_score.ravel()[perm]) == pytest.approx(
        expected, rel=1e-9, abs=1e-12)


def test_frame_prf_by_hand() -> None:
    y_true, y_score = _hand_example()
    # Threshold 0.5 -> predicted active: (0, p_a) 0.9 TP, (1, p_b) 0.8 TP, (2, p_b) 0.6 FP; (2, p_a) is a miss.
    # TP = 2, FP = 1, FN = 1: precision = recall = F1 = 2/3; mir_eval accuracy TP / (TP + FP + FN) = 2/4.
    m = frame_prf(y_true, y_score, threshold=0.5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(0.5)
    # The numpy tuning F1 agrees with mir_eval's.
    assert frame_f1_curve(y_true, y_score, [0.5])[0] == pytest.approx(2 / 3)


@pytest.mark.parametrize("pitches", [(5, 64), (5, 120), (0, 127)])
def test_frame_prf_outside_mir_eval_band(pitches: tuple[int, int]) -> None:
    # mir_eval.multipitch rejects < 20 Hz / > 5 kHz; low/high pitches must still score the same.
    m = frame_prf(*_hand_example(*pitches), threshold=0.5)
    assert (m["precision"], m["recall"], m["accuracy"]) == pytest.approx((2 / 3, 2 / 3, 0.5))


def test_tune_threshold() -> None:
    y_true, y_score = _hand_example()
    # For t in (0.6, 0.8]: TP = 2, FP = 0, FN = 1 -> F1 = 4/5, the best; lowest such candidate is 0.65.
    assert tune_threshold(y_true, y_score) == pytest.approx(0.65)
    # t = 0.3: 0.9, 0.8, 0.6, 0.4, 0.35 on -> TP 3, FP 2, FN 0 -> F1 = 6/8.
    # t = 0.05: all six nonzero cells on -> TP 3, FP 3 -> F1 = 6/9.
    np.testing.assert_allclose(frame_f1_curve(y_true, y_score, [0.3, 0.05]), [6 / 8, 6 / 9])


def test_note_prf_onset_tolerance() -> None:
    ref = make_notes([0.5, 1.0, 2.0], [0.9, 1.5, 2.5], [60, 62, 64])
    assert note_prf(ref, ref) == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0})
    # Offsets are ignored: only onsets and pitches must match.
    assert note_prf(ref, make_notes(ref.onset, ref.offset + 0.3, ref.pitch))["f1"] == pytest.approx(1.0)
    assert note_prf(ref, make_notes(ref.onset + 0.04, ref.offset, ref.pitch))["f1"] == pytest.approx(1.0)
    assert note_prf(ref, make_notes(ref.onset + 0.06, ref.offset, ref.pitch))["f1"] == pytest.approx(0.0)
    # Wrong pitch never matches.
    assert note_prf(ref, make_notes(ref.onset, ref.offset, ref.pitch + 1))["f1"] == 0.0


def test_transcription_metrics_combines() -> None:
    y_true, y_score = _hand_example()
    m = transcription_metrics(y_true, y_score, threshold=0.5, min_note_frames=1)
    assert m["frame_ap"] == pytest.approx(2.6 / 3)
    assert m["frame_f1"] == pytest.approx(2 / 3)
    # Ref notes: (p_a, frame 0), (p_b, frame 1), (p_a, frame 2); estimated: (p_a, 0), (p_b, 1..2).
    # Both estimates match onsets -> precision 1, recall 2/3, F1 0.8.
    assert (m["note_precision"], m["note_recall"], m["note_f1"]) == pytest.approx((1.0, 2 / 3, 0.8))


def test_classification_metrics_with_absent_class() -> None:
    # 4 classes; "c" is only ever predicted, "d" never occurs at all.
    m = classification_metrics([0, 0, 1, 1, 1], [0, 2, 1, 1, 0], ["a", "b", "c", "d"])
    assert m["confusion"] == [[1, 0, 1, 0], [1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert m["accuracy"] == pytest.approx(3 / 5)
    # Recall a = 1/2, b = 2/3 (c, d have no true samples) -> balanced accuracy 7/12.
    assert m["balanced_accuracy"] == pytest.approx(7 / 12)
    # F1: a: TP 1, FP 1, FN 1 -> 0.5; b: TP 2, FP 0, FN 1 -> 0.8; c: TP 0, FP 1 -> 0; d undefined, left out.
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["per_class_f1"][:3] == pytest.approx([0.5, 0.8, 0.0]) and math.isnan(m["per_class_f1"][3])
    assert m["class_names"] == ["a", "b", "c", "d"]
    with pytest.raises(ValueError):
        classification_metrics([0, 4], [0, 1], ["a", "b"])


def test_per_instrument_ap_nan_for_absent_instrument() -> None:
    y_true, y_score = _hand_example()
    t = np.zeros((3, 2, 128), bool)
    s = np.zeros((3, 2, 128))
    t[:, 0], s[:, 0] = y_true, y_score
    s[:, 1] = 0.3  # scores but no positives for the second instrument
    ap = per_instrument_ap(t, s, ["Piano", "Violin"])
    assert ap["Piano"] == pytest.approx(2.6 / 3)
    assert math.isnan(ap["Violin"])
