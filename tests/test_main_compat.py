"""The original project's documented commands keep working through main.py."""
from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = "python main.py --samplingType samesequence --useSincNet --maxChunksInMem 5"
DOWNSTREAM = "python main.py --supervised --load logs/checkpoint3.pt --maxChunksInMem 5"
# Small sizes so the documented commands run in seconds on a tiny corpus.
TINY = "--sizeWindow 2560 --hiddenEncoder 32 --hiddenGar 32 --batchSize 2 --nPredicts 4 --negativeSamplingExt 8 " \
       "--threads 1 --noProgress"


@pytest.fixture(scope="module")
def main_py():
    spec = importlib.util.spec_from_file_location("jtm_original_main", ROOT / "main.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _argv(command: str, extra: str = "") -> list[str]:
    words = shlex.split(command)
    assert words[:2] == ["python", "main.py"]
    return words[2:] + shlex.split(extra)


def test_documented_commands_parse(main_py) -> None:
    args = main_py.parse_args(_argv(PRETRAIN))
    assert args.samplingType == "samesequence" and not args.supervised
    assert main_py.model_config(args).encoder == "sinc"
    assert main_py.memory_gb(args) == pytest.approx(5.0)

    args = main_py.parse_args(_argv(DOWNSTREAM))
    assert args.supervised and args.load == ["logs/checkpoint3.pt"] and args.task == "transcription"
    assert main_py.memory_gb(args) == pytest.approx(5.0)


def test_unknown_flag_is_an_error_naming_it(main_py, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main_py.main(["--samplingType", "samesequence", "--nEpochz", "3"])
    assert exc.value.code == 2
    assert "--nEpochz" in capsys.readouterr().err


def test_meaningless_flags_only_warn(main_py, capsys) -> None:
    args = main_py.parse_args(["--abspos", "--loadCriterion", "--transcriptionWindow", "160", "--dropout"])
    err = capsys.readouterr().err
    assert "--abspos" in err and "--loadCriterion" in err and "--transcriptionWindow" in err
    assert args.dropout == pytest.approx(0.1)


def test_pretrain_then_load_checkpoint(main_py, musicnet_folder, tmp_path: Path, monkeypatch, capsys) -> None:
    from jtm.models.downstream import load_encoder_file

    src, _ = musicnet_folder
    monkeypatch.setenv("JTM_DATA", str(src))  # a MusicNet-layout folder: prepared into src/.jtm-store
    monkeypatch.chdir(tmp_path)

    assert main_py.main(_argv(PRETRAIN, TINY + " --nEpoch 4 --limitTrainBatches 1")) == 0
    assert (src / ".jtm-store" / "store.json").is_file()
    for epoch in range(4):
        assert (tmp_path / "logs" / f"checkpoint{epoch}.pt").is_file()
    encoder = load_encoder_file(tmp_path / "logs" / "checkpoint3.pt")  # safetensors: loading never unpickles
    assert encoder.config.encoder == "sinc" and encoder.config.encoder_dim == 32
    assert (tmp_path / "logs" / "checkpoint3.pt").read_bytes()[:1] != b"\x80"  # not a pickle

    assert main_py.main(_argv(DOWNSTREAM, TINY + " --nEpoch 1 --limitTrainBatches 2")) == 0
    run = tmp_path / "logs" / "downstream_transcription"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "transcription" and "frame_ap" in metrics and "note_f1" in metrics
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["frontend"]["config"]["encoder"] == "sinc"  # the loaded encoder, fine-tuned
    assert json.loads((run / "run.json").read_text())["finetune"] is True
    assert '"frame_ap"' in capsys.readouterr().out
