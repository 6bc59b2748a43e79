"""The diagnostics behind docs/RESULTS.md run end to end on a store and print what the document quotes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from jtm.models.config import CPCConfig
from jtm.models.cpc import CPCEncoder
from jtm.training.config import PretrainConfig
from jtm.fileio import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]


def test_probe_layers_scores_every_layer_of_each_model(prepared_store, tmp_path: Path) -> None:
    store, _ = prepared_store
    run = tmp_path / "run"
    model = CPCConfig(encoder="gabor", encoder_dim=8, context_dim=8, gabor_filters=24, gabor_kernel=1025)
    write_json_atomic(run / "run.json", PretrainConfig(data=str(store.path), out=str(run), model=model).to_dict())
    torch.manual_seed(1)
    CPCEncoder(model).save_pretrained(run / "encoder")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "probe_layers.py"), "--store", str(store.path),
                          "--models", f"logmel,random:{run},{run}", "--val-fraction", "0.25", "--seeds", "2"],
                         capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["model"] for r in rows] == ["logmel", f"random:{run}", str(run)]
    assert set(rows[1]["layers"]) == {"spectrum", "block1", "block2", "c", "zc", "sc"}
    for row in rows:
        for layer in row["layers"].values():
            assert len(layer["seeds"]) == 2
            assert all(0.0 <= s["test_ap"] <= 1.0 and 0.0 <= s["val_ap"] <= 1.0 for s in layer["seeds"])
    # the untrained model's spectrum is the fixed constant-Q start: the trained weights never change it here
    assert rows[1]["layers"]["spectrum"] == rows[2]["layers"]["spectrum"]
