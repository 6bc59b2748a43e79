"""``jtm report``: a well-formed, self-contained HTML page with every section, robust to missing or bad input."""
from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from jtm.evaluation.report import SECTIONS, discover, render_report, write_report
from jtm.models.config import CPCConfig
from tests.apply_helpers import run_cli

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class StrictParser(HTMLParser):
    """Checks that every element is closed in order; collects section ids, h2 texts, img sources, links."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.sections: list[str] = []
        self.headings: list[str] = []
        self.images: list[str] = []
        self.urls: list[str] = []
        self.tags: set[str] = set()
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self.sections.append(a.get("id") or "")
        if tag == "img":
            self.images.append(a.get("src") or "")
        for key in ("href", "src"):
            if a.get(key):
                self.urls.append(a[key] or "")
        if tag == "h2":
            self._in_h2 = True
            self.headings.append("")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.headings[-1] += data


def parse(html: str) -> StrictParser:
    p = StrictParser()
    p.feed(html)
    p.close()
    assert not p.errors, p.errors[:5]
    assert p.stack == [], p.stack
    return p




@pytest.fixture(scope="module")
def demo_like(prepared_store, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) pretraining run and study on the shared test store, laid out like a demo folder."""
    from jtm.pipelines.study import StudyConfig, run_study
    from jtm.training.pretrain import PretrainConfig, run_pretrain

    store, _ = prepared_store
    root = tmp_path_factory.mktemp("report") / "demo"
    model = CPCConfig(encoder_dim=16, context_dim=16, predict_steps=3, negatives=8, norm="batch")
    run_pretrain(PretrainConfig(data=str(store.path), out=str(root / "pretrain"), model=model, window=2560,
                                batch_size=2, epochs=1, limit_train_batches=3, val_fraction=0.25, threads=1,
                                progress=False, log_every_n_steps=1))
    run_study(StudyConfig(data=str(store.path), out=str(root / "study"), pretrained=str(root / "pretrain"),
                          tasks=("transcription", "ensemble"), fractions=(1.0,), methods=("cpc-linear",), seeds=1,
                          steps=4, eval_every=2, patience=0, probe_lrs=(1e-2,), window=2560, batch_size=2,
                          val_fraction=0.25, threads=1), log=lambda _: None)
    return root


def test_report_has_every_section_with_figures_and_is_well_formed(demo_like: Path, tmp_path: Path) -> None:
    out = tmp_path / "r" / "report.html"
    code, stdout, err = run_cli(["report", demo_like, "-o", out])
    assert code == 0, err
    assert str(out) in stdout
    html = out.read_text(encoding="utf-8")
    p = parse(html)
    assert p.sections == [sid for sid, _ in SECTIONS]
    assert [h.strip() for h in p.headings] == [title for _, title in SECTIONS]
    # CPC curves, label efficiency x 2 tasks, confusion matrices, piano roll: all embedded PNGs.
    pngs = [src for src in p.images if src.startswith("data:image/png;base64,")]
    assert len(pngs) == len(p.images) >= 5
    # Self-contained: no scripts, no external resources.
    assert "script" not in p.tags
    assert all(u.startswith(("data:", "#")) for u in p.urls), [u[:40] for u in p.urls]
    for text in ("frame_ap", "accuracy", "cpc-linear", "Solo Piano" if "Solo Piano" in html else "ensemble",
                 "torch", "lightning", "numpy", "threads", "pieces", "minutes"):
        assert text in html, text
    # No section fell back to an error.
    assert 'class="error"' not in html


def test_sections_without_input_say_so_and_nothing_crashes(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    html = render_report([tmp_path / "empty"])
    p = parse(html)
    assert p.sections == [sid for sid, _ in SECTIONS]
    assert html.count('class="note"') >= 6
    assert "environment" in p.sections and "torch" in html


def test_broken_inputs_cost_one_section_each(demo_like: Path, tmp_path: Path) -> None:
    broken = tmp_path / "demo"
    shutil.copytree(demo_like, broken, ignore=shutil.ignore_patterns("checkpoints", "*.ckpt"))
    (broken / "study" / "results.csv").write_text("not,a\n\x00valid")
    for excerpt in broken.rglob("excerpt.npz"):
        excerpt.write_bytes(b"garbage")
    for metrics in broken.rglob("metrics.json"):
        if "ensemble" in str(metrics):
            metrics.write_text("{not json")
    html = render_report([broken])
    p = parse(html)
    assert p.sections == [sid for sid, _ in SECTIONS]
    assert 'class="error"' in html
    assert any(src.startswith("data:image/png;base64,") for src in p.images)  # the CPC curves survive


def test_text_is_escaped(demo_like: Path, tmp_path: Path) -> None:
    odd = tmp_path / "<b>run & \"co\"</b>"
    shutil.copytree(demo_like / "pretrain", odd / "pretrain", ignore=shutil.ignore_patterns("checkpoints"))
    html = write_report([odd], tmp_path / "x.html", title="<i>mine</i>").read_text(encoding="utf-8")
    parse(html)
    assert "<b>run" not in html and "&lt;b&gt;run &amp; &quot;co&quot;&lt;/b&gt;" in html
    assert "<i>mine</i>" not in html and "&lt;i&gt;mine&lt;/i&gt;" in html


def test_discover_finds_each_kind_and_missing_input_is_an_error(demo_like: Path, tmp_path: Path) -> None:
    found = discover([demo_like])
    assert [p.name for p in found.pretrain] == ["pretrain"]
    assert [p.name for p in found.studies] == ["study"]
    assert {p.parents[2].name for p in found.downstream} == {"transcription", "ensemble"}
    code, _, err = run_cli(["report", tmp_path / "missing", "-o", tmp_path / "r.html"])
    assert code != 0 and "missing" in err
    assert not (tmp_path / "r.html").exists()


def test_excerpt_is_computed_when_the_run_has_none(demo_like: Path, tmp_path: Path) -> None:
    from jtm.evaluation.report import compute_excerpt, load_excerpt

    run = next(p for p in discover([demo_like]).downstream if p.parents[2].name == "transcription")
    truth, pred, rate, caption = compute_excerpt(run, seconds=2.0)
    assert truth.shape == pred.shape == (200, 128) and truth.dtype == bool and rate == 100.0
    assert np.all((pred >= 0) & (pred <= 1)) and "computed" in caption
    if (run / "excerpt.npz").is_file():
        t2, p2, _, _ = load_excerpt(run / "excerpt.npz")
        assert t2.shape == p2.shape


def _new_format_study(root: Path, with_summary: bool = True) -> Path:
    """A study folder as the seeded ``jtm study`` writes it: 2 methods x 2 fractions x 3 seeds of one task."""
    import json

    import pandas as pd

    from jtm.evaluation.stats import chance_row, summarize_results

    study = root / "study"
    study.mkdir(parents=True)
    rows = []
    for method, base in (("cpc-linear", 0.40), ("logmel-linear", 0.30)):
        for fraction, gain in ((0.1, 0.0), (1.0, 0.1)):
            for seed in range(3):
                rows.append({"task": "transcription", "method": method, "fraction": fraction, "seed": seed,
                             "headline_metric": "frame_ap", "headline": base + gain + 0.01 * seed,
                             "val_score": 0.5, "lr": (0.001, 0.003, 0.001)[seed], "best_step": 10, "steps": 20,
                             "train_seconds": 1.5, "n_train_tracks": 4, "n_val": 1, "n_test": 1,
                             "frame_f1": float("nan")})
    results = pd.DataFrame(rows)
    results.to_csv(study / "results.csv", index=False)
    if with_summary:
        chance = [chance_row("transcription", f, "frame_ap", 0.052) for f in (0.1, 1.0)]
        summary = pd.concat([summarize_results(results), pd.DataFrame(chance)], ignore_index=True)
        summary.to_csv(study / "summary.csv", index=False)
    (study / "study.json").write_text(json.dumps({"tasks": ["transcription"], "seeds": [0, 1, 2],
                                                  "lrs": [0.001, 0.003], "marker": "study-config-7731"}))
    (study / "environment.json").write_text(json.dumps({"hostname": "env-marker-4242", "threads": 2,
                                                        "versions": {"torch": "2.x"}}))
    return study


def _section(html: str, sid: str) -> str:
    start = html.index(f'<section id="{sid}">')
    return html[start:html.index("</section>", start)]


def test_seeded_study_shows_spreads_chance_lrs_and_its_json(tmp_path: Path) -> None:
    study = _new_format_study(tmp_path)
    html = render_report([study])
    p = parse(html)
    assert 'class="error"' not in html
    results = _section(html, "results")
    # cpc-linear at 0.1: 0.40, 0.41, 0.42 -> mean 0.41, half-width t(0.975, 2) * 0.01 / sqrt(3) = 0.0248.
    assert "0.410 ± 0.025" in results and "0.400–0.420" in results
    assert "lr 0.001,0.003,0.001" in results and "0.001, 0.003, 0.001" in results
    # Chance is the last row of the spread table, with its value and no interval.
    spread = results[results.index('class="spread"'):results.index("</table>")]
    assert spread.rindex("<th>chance</th>") > spread.rindex("<th>logmel-linear</th>") > spread.index("cpc-linear")
    assert ">0.052<" in spread
    assert "Every run (12 rows" in results  # per-seed rows folded away
    # Paired by seed: cpc-linear beats log-mel by exactly 0.10 on every seed, so the paired interval is a point.
    assert "paired differences" in results and "cpc-linear − logmel-linear" in results
    assert "+0.100 [+0.100, +0.100] 3/3" in results
    # Every table scrolls inside its own wrapper.
    assert html.count("<table") == html.count('<div class="table-wrap">') > 3
    assert ".table-wrap" in html and "overflow-x: auto" in html
    # The study folder's configuration and environment, once each.
    assert _section(html, "configuration").count("study-config-7731") == 1
    assert _section(html, "environment").count("env-marker-4242") == 1
    # The label-efficiency figure is drawn from the seeds, with the chance level.
    le = _section(html, "label-efficiency")
    assert "data:image/png;base64," in le and "95 % confidence interval" in le and "chance" in le
    assert len(p.images) == 1


def test_seeded_study_without_summary_csv_computes_the_spreads(tmp_path: Path) -> None:
    study = _new_format_study(tmp_path, with_summary=False)
    html = render_report([study])
    parse(html)
    results = _section(html, "results")
    assert "0.410 ± 0.025" in results and "<th>chance</th>" not in results
    assert 'class="error"' not in html


def test_old_format_study_still_renders(tmp_path: Path) -> None:
    import pandas as pd

    study = tmp_path / "old"
    study.mkdir()
    pd.DataFrame([{"task": "ensemble", "method": m, "fraction": f, "headline_metric": "accuracy",
                   "headline": 0.5 + f / 10, "accuracy": 0.5 + f / 10, "n_test": 3}
                  for m in ("cpc-linear", "supervised") for f in (0.1, 1.0)]).to_csv(study / "results.csv",
                                                                                     index=False)
    html = render_report([study])
    p = parse(html)
    assert 'class="error"' not in html and "±" not in _section(html, "results")
    assert "old: results.csv" in html and "cpc-linear" in _section(html, "results")
    assert len(p.images) == 1


def test_notes_study_shows_frame_and_note_scores_and_held_out_timbres(tmp_path: Path) -> None:
    """A notes task: frame F1, note F1 and note F1 with offsets per arm and fraction, mean ± CI over seeds; the
    held-out-timbre columns appear for every task whose results.csv rows have them, and not otherwise."""
    import pandas as pd

    study = tmp_path / "study"
    study.mkdir()
    rows = []
    for seed in range(3):
        rows.append({"task": "notes", "method": "logmel-note", "fraction": 1.0, "seed": seed,
                     "headline_metric": "note_f1", "headline": 0.50 + 0.01 * seed, "note_f1": 0.50 + 0.01 * seed,
                     "frame_f1": 0.70 + 0.02 * seed, "note_offset_f1": 0.30, "lr": 0.001,
                     "heldout_timbre_headline": 0.40 + 0.01 * seed, "heldout_timbre_note_f1": 0.40 + 0.01 * seed,
                     "heldout_timbre_frame_f1": 0.61, "heldout_timbre_note_offset_f1": 0.21})
        rows.append({"task": "transcription", "method": "logmel-linear", "fraction": 1.0, "seed": seed,
                     "headline_metric": "frame_ap", "headline": 0.6, "frame_f1": 0.5, "lr": 0.001,
                     "heldout_timbre_headline": 0.45 + 0.02 * seed})
        rows.append({"task": "ensemble", "method": "cpc-linear", "fraction": 1.0, "seed": seed,
                     "headline_metric": "accuracy", "headline": 0.9, "lr": 0.001})
    pd.DataFrame(rows).to_csv(study / "results.csv", index=False)
    html = render_report([study])
    parse(html)
    results = _section(html, "results")
    assert 'class="error"' not in html
    notes = results[results.index("<h4>notes: test scores"):]
    notes = notes[:notes.index("</table>")]
    headers = ["frame F1", "note F1", "note F1 with offsets", "held-out timbres: frame F1",
               "held-out timbres: note F1", "held-out timbres: note F1 with offsets"]
    assert [notes.index(f"<th>{h}</th>") for h in headers] == sorted(notes.index(f"<th>{h}</th>") for h in headers)
    # frame F1 0.70, 0.72, 0.74 -> 0.720 ± t(0.975, 2) * 0.02 / sqrt(3) = 0.050; note F1 0.510 ± 0.025
    for cell in ("0.720 ± 0.050", "0.510 ± 0.025", "0.300 ± 0.000", "0.410 ± 0.025"):
        assert cell in notes
    assert "<th>logmel-note</th>" in notes
    transcription = results[results.index("<h4>transcription: test scores"):]
    transcription = transcription[:transcription.index("</table>")]
    assert "<th>frame_ap</th>" in transcription and "<th>held-out timbres: frame_ap</th>" in transcription
    assert "0.470 ± 0.050" in transcription
    assert "<h4>ensemble: test scores" not in results  # nothing beyond its headline to show
