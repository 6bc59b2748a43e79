"""Configurations: one strict loader, declared bounds, hostile config.json files, and command-line defaults that
come from the dataclasses (a drifted default fails here)."""
from __future__ import annotations

import dataclasses
import inspect
import json
import re
from enum import Enum
from pathlib import Path

import pytest
import typer

from jtm.configs import DEFAULT_WINDOW, ConfigError, field_default, load_config
from jtm.errors import ModelFileError
from jtm.models.config import CPCConfig
from jtm.models.logmel import LogMelConfig
from jtm.pipelines.demo import DemoConfig
from jtm.pipelines.study_config import StudyConfig
from jtm.training.config import DownstreamConfig, PretrainConfig
from tests.apply_helpers import make_downstream_run, make_pretrain_run, run_cli, write_tone

ROOT = Path(__file__).resolve().parents[1]


def examples() -> list:
    """One valid instance of every configuration class."""
    return [CPCConfig(), LogMelConfig(), PretrainConfig("store", "run"), DownstreamConfig("store", "run"),
            DownstreamConfig("store", "run", model=CPCConfig(encoder="gabor"), steps=10, limit_train_batches=0.5),
            StudyConfig("store", "study"), DemoConfig.full(), DemoConfig.quick()]


@pytest.mark.parametrize("config", examples(), ids=lambda c: type(c).__name__)
def test_every_config_survives_a_json_round_trip(config) -> None:
    saved = json.loads(json.dumps(config.to_dict()))
    assert type(config).from_dict(saved) == config


def test_an_unknown_key_names_the_file_the_key_a_close_match_and_the_valid_keys() -> None:
    with pytest.raises(ConfigError) as e:
        CPCConfig.from_dict({"encoder_dims": 64}, "runs/x/encoder/config.json")
    message = str(e.value)
    assert message.startswith("runs/x/encoder/config.json: unknown key 'encoder_dims' in CPCConfig")
    assert "did you mean 'encoder_dim'?" in message and "valid keys: context, context_dim," in message
    with pytest.raises(ConfigError, match=r"run.json: unknown key 'model.headz' in CPCConfig \(did you mean 'heads'"):
        PretrainConfig.from_dict({"data": "s", "out": "o", "model": {"headz": 3}}, "run.json")
    with pytest.raises(ConfigError, match="study.json: unknown key 'epochs' in StudyConfig; valid keys"):
        StudyConfig.from_dict({"data": "s", "out": "o", "epochs": 3}, "study.json")


@pytest.mark.parametrize("cls, key, value, expected", [
    (CPCConfig, "encoder_dim", "256", "encoder_dim must be an integer, got string '256'"),
    (CPCConfig, "encoder_dim", 256.0, "encoder_dim must be an integer, got number 256.0"),
    (CPCConfig, "reverse", 1, "reverse must be a boolean, got integer 1"),
    (CPCConfig, "temperature", "hot", "temperature must be a number, got string"),
    (LogMelConfig, "f_max", [8000], "f_max must be a number or null, got list"),
    (StudyConfig, "fractions", [0.1, "all"], "fractions must be a list of numbers, got list"),
    (StudyConfig, "tasks", "transcription", "tasks must be a list of strings, got string"),
    (PretrainConfig, "model", [], "model must be an object \\(CPCConfig\\), got list"),
    (DownstreamConfig, "devices", 1.5, "devices must be an integer or a string, got number"),
    (DemoConfig, "threads", True, "threads must be an integer or null, got boolean"),
])
def test_a_wrong_type_names_the_key_the_expected_and_the_actual_type(cls, key, value, expected) -> None:
    data = {"data": "s", "out": "o"} if "data" in {f.name for f in dataclasses.fields(cls)} else {}
    with pytest.raises(ConfigError, match=f"^cfg.json: {expected}"):
        cls.from_dict({**data, key: value}, "cfg.json")


def test_json_values_become_the_field_types() -> None:
    study = StudyConfig.from_dict({"data": "s", "out": "o", "fractions": [1], "skip": []})
    assert study.fractions == (1.0,) and isinstance(study.fractions[0], float) and study.skip == ()
    assert PretrainConfig.from_dict({"data": "s", "out": "o", "devices": "auto"}).devices == "auto"


def test_missing_keys_take_their_defaults_and_retired_keys_are_skipped() -> None:
    """Files saved by earlier versions: a field added since takes its default; the demo's retired protocol keys
    (moved to StudyConfig) are read and ignored."""
    legacy = {k: v for k, v in CPCConfig().to_dict().items() if k not in ("gabor_learnable", "score")}
    assert CPCConfig.from_dict(legacy) == CPCConfig()
    assert PretrainConfig.from_dict({"data": "s", "out": "o"}).model == CPCConfig()
    old_demo = {**DemoConfig.full().to_dict(), "study_epochs": 6, "study_lr": 1e-3, "tune_max_seconds": 30.0}
    assert DemoConfig.from_dict(old_demo) == DemoConfig.full()
    with pytest.raises(ConfigError, match="StudyConfig needs the key\\(s\\) data, out"):
        StudyConfig.from_dict({})
    with pytest.raises(ConfigError, match="x.json: CPCConfig must be a JSON object, got list"):
        CPCConfig.from_dict([], "x.json")


def bounded_fields(config) -> list[tuple[str, float, float]]:
    return [(f.name, *f.metadata["bounds"]) for f in dataclasses.fields(config) if "bounds" in f.metadata]


@pytest.mark.parametrize("config", examples(), ids=lambda c: type(c).__name__)
def test_every_bounded_field_refuses_values_beyond_its_bounds_on_construction_and_on_load(config) -> None:
    fields = bounded_fields(config)
    assert fields
    for name, low, high in fields:
        huge = int(high * 1000 + 1) if isinstance(high, int) else high * 1000 + 1
        with pytest.raises(ConfigError, match=f"{type(config).__name__}.{name} must lie in"):
            dataclasses.replace(config, **{name: huge})
        with pytest.raises(ConfigError, match=f"^saved.json: {type(config).__name__}.{name} must lie in"):
            type(config).from_dict({**json.loads(json.dumps(config.to_dict())), name: huge}, "saved.json")
        if low > 0:
            with pytest.raises(ConfigError):
                dataclasses.replace(config, **{name: type(low)(0) if low >= 1 else -1.0})


def test_the_sizes_that_allocate_memory_are_all_bounded() -> None:
    def names(cls):
        return {f.name for f in dataclasses.fields(cls) if "bounds" in f.metadata}

    assert {"encoder_dim", "context_dim", "context_layers", "heads", "predict_steps", "negatives", "sinc_kernel",
            "gabor_filters", "gabor_kernel", "sample_rate"} <= names(CPCConfig)
    assert {"n_fft", "n_mels", "hop", "sample_rate"} <= names(LogMelConfig)
    for cls in (PretrainConfig, DownstreamConfig, StudyConfig, DemoConfig):
        assert {"window", "batch_size"} <= names(cls), cls.__name__
    assert {"hidden"} <= names(DownstreamConfig) & names(StudyConfig)


# ------------------------------------------------------------------------------------- hostile config.json files


def rewrite_json(path: Path, change) -> Path:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def forbid_building(monkeypatch):
    """Call it to fail loudly if a CPC encoder is built from then on: a refused config stops before allocating."""
    import jtm.models.cpc

    def refuse(*args, **kwargs):
        raise AssertionError("an encoder was built from a refused config")

    return lambda: monkeypatch.setattr(jtm.models.cpc, "build_encoder", refuse)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["config"].update(encoder_dim=10**9), "CPCConfig.encoder_dim must lie in \\[1, 4096\\], got 1000000000"),
    (lambda d: d["config"].update(gabor_kernel=2**40 + 1), "CPCConfig.gabor_kernel must lie in"),
    (lambda d: d["config"].update(encoder_dims=64), "unknown key 'encoder_dims' in CPCConfig"),
    (lambda d: d["config"].update(context_layers="2"), "context_layers must be an integer, got string"),
])
def test_a_hostile_encoder_config_is_refused_before_building(tmp_path: Path, forbid_building, change, message) -> None:
    from jtm.models.cpc import CPCEncoder

    run = make_pretrain_run(tmp_path / "run")
    config = rewrite_json(run / "encoder" / "config.json", change)
    forbid_building()
    with pytest.raises(ModelFileError, match=f"^{re.escape(str(config))}: {message}"):
        CPCEncoder.from_pretrained(run)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["frontend"]["config"].update(context_dim=10**9), "CPCConfig.context_dim must lie in"),
    (lambda d: d["probe"].update(n_out=10**9), "ProbeSpec.n_out must lie in"),
    (lambda d: d["probe"].update(in_dim=10**9), "ProbeSpec.in_dim must lie in"),
    (lambda d: d["probe"].update(in_dim=7), "probe.in_dim is 7 but the front end's context features are 24 wide"),
    (lambda d: d["probe"].update(kernel=3), "unknown key 'probe.kernel' in ProbeSpec"),
    (lambda d: d.update(extra={"a": 1}), "unknown key 'extra' in DownstreamFile"),
    (lambda d: d.update(threshold="high"), "threshold must be a number or null, got string"),
    (lambda d: d["frontend"].update(kind="wav2vec"), "unknown front end kind 'wav2vec'"),
    (lambda d: d.pop("probe"), "DownstreamFile needs the key\\(s\\) probe"),
])
def test_a_hostile_downstream_config_is_refused(tmp_path: Path, forbid_building, change, message) -> None:
    from jtm.models.downstream import DownstreamModel

    run = make_downstream_run(tmp_path / "run")
    config = rewrite_json(run / "model" / "config.json", change)
    forbid_building()
    with pytest.raises(ModelFileError, match=f"^{re.escape(str(config))}: {message}"):
        DownstreamModel.from_pretrained(run / "model")


def test_the_commands_refuse_a_hostile_config_json_with_one_clear_line(tmp_path: Path, forbid_building) -> None:
    audio = write_tone(tmp_path / "a.wav", 1.0, 16_000)
    down = make_downstream_run(tmp_path / "down")
    rewrite_json(down / "model" / "config.json", lambda d: d["frontend"]["config"].update(encoder_dim=10**9))
    pre = make_pretrain_run(tmp_path / "pre")
    rewrite_json(pre / "encoder" / "config.json", lambda d: d["config"].update(encoder_dim=10**9))
    forbid_building()
    for args, config in ((["transcribe", audio, "--model", down, "--out", tmp_path / "midi"], down / "model"),
                         (["embed", audio, "--model", pre, "--out", tmp_path / "npy"], pre / "encoder")):
        code, out, err = run_cli(args)
        assert code == 1, (out, err)
        assert f"{config / 'config.json'}: CPCConfig.encoder_dim must lie in [1, 4096], got 1000000000" in err
        assert "Traceback" not in err and not list(tmp_path.glob("midi/*")) and not list(tmp_path.glob("npy/*"))


def test_transcribe_ignores_a_run_json_claiming_a_huge_window(tmp_path: Path) -> None:
    """The run.json beside a model only hints how to chunk; a window of 10^9 frames is not allocated."""
    audio = write_tone(tmp_path / "a.wav", 1.0, 16_000)
    run = make_downstream_run(tmp_path / "run")
    rewrite_json(run / "run.json", lambda d: d.update(window=160 * 10**9, batch_size=10**9))
    code, out, err = run_cli(["transcribe", audio, "--model", run, "--out", tmp_path / "midi"])
    assert code == 0, err
    assert "chunks of 10 s with 1 s of context" in out and (tmp_path / "midi" / "a.mid").is_file()


def test_a_hostile_config_in_an_encoder_files_metadata_is_refused(tmp_path: Path, forbid_building) -> None:
    """The original command line's single-file checkpoints keep the config in the safetensors metadata."""
    import torch
    from safetensors.torch import save_file

    from jtm.models.downstream import ENCODER_FILE_FORMAT, load_encoder_file

    path = tmp_path / "checkpoint3.pt"
    config = {**CPCConfig().to_dict(), "negatives": 10**12}
    save_file({"w": torch.zeros(1)}, str(path), metadata={"format": ENCODER_FILE_FORMAT, "version": "1",
                                                         "config": json.dumps(config)})
    forbid_building()
    with pytest.raises(ModelFileError, match=f"^{re.escape(str(path))} \\(metadata 'config'\\): CPCConfig.negatives"):
        load_encoder_file(path)


def test_an_option_out_of_its_fields_bounds_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = run_cli(["pretrain", "--data", tmp_path, "--out", tmp_path / "run", "--encoder-dim", "100000"])
    assert code == 2 and "CPCConfig.encoder_dim must lie in [1, 4096], got 100000" in err
    code, _, err = run_cli(["study", "--data", tmp_path, "--out", tmp_path / "study", "--steps", "0"])
    assert code == 2 and "StudyConfig.steps must lie in [1, 100000000], got 0" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "study").exists()


# ------------------------------------------------------------------------------- command-line defaults


CONFIG_OF = {
    "pretrain": (PretrainConfig, CPCConfig),
    "downstream": (DownstreamConfig,),
    "study": (StudyConfig,),
    "demo": (DemoConfig,),
}
"""Commands whose options set configuration fields: every option must be a field of these or listed below."""
NOT_CONFIG = {
    ("demo", "out"), ("demo", "quick"),
    ("demo", "minutes"), ("demo", "threads"), ("demo", "workers"),  # None: keep the preset's (full or quick) value
}


def pipeline_functions() -> dict[str, object]:
    """Commands without a config dataclass: their options are checked against the function they call."""
    from jtm.data.prepare import prepare_store
    from jtm.data.synth import build_corpus
    from jtm.pipelines.embed import embed_files
    from jtm.pipelines.evaluate import evaluate_run
    from jtm.pipelines.transcribe import transcribe_files

    return {"transcribe": transcribe_files, "embed": embed_files, "evaluate": evaluate_run,
            "data synth": build_corpus, "data prepare": prepare_store}


def commands(group, prefix: str = ""):
    """(name, click command) of every command under a click group (typer vendors its own click)."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def as_field_value(value, expected):
    """An option's default as the configuration field would hold it: an enum's value, a list option's
    comma-separated text as a tuple, a number-or-word option (``--devices``) as the number."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(expected, tuple) and isinstance(value, str):
        item = type(expected[0]) if expected else str
        return tuple(item(v) for v in value.split(",")) if value else ()
    if isinstance(expected, int) and isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def drifted_defaults(app: typer.Typer, config_of: dict, functions: dict, not_config=frozenset()) -> list[str]:
    """Every option whose default differs from its configuration field's (or its pipeline parameter's), and every
    option of a config-backed command that maps to no field."""
    problems = []
    for name, command in commands(typer.main.get_command(app)):
        for option in command.params:
            if option.param_type_name != "option" or option.required:
                continue
            if (name, option.name) in not_config:
                continue
            if name in config_of:
                owners = [c for c in config_of[name] if option.name in {f.name for f in dataclasses.fields(c)}]
                if not owners:
                    problems.append(f"{name} --{option.name}: no field of {config_of[name]}")
                    continue
                expected = field_default(owners[0], option.name)
            elif name in functions:
                parameter = inspect.signature(functions[name]).parameters.get(option.name)
                if parameter is None or parameter.default is inspect.Parameter.empty or option.default is None:
                    continue  # None: the option is not given, the function's own default applies
                expected = parameter.default
            else:
                continue
            got = as_field_value(option.default, expected)
            if got != expected or type(got) is not type(expected):
                problems.append(f"{name} --{option.name}: default {got!r}, but the source says {expected!r}")
    return problems


def test_every_option_default_is_its_config_fields_default() -> None:
    from jtm.cli import app

    assert drifted_defaults(app, CONFIG_OF, pipeline_functions(), NOT_CONFIG) == []


def test_a_drifted_default_is_caught() -> None:
    """The check above can fail: an option that re-types a default, now different from the dataclass's."""
    drifted = typer.Typer()

    @drifted.command("pretrain")
    def pretrain(lr: float = typer.Option(3e-4), window: int = typer.Option(DEFAULT_WINDOW),
                 stray: int = typer.Option(1)) -> None:
        pass

    @drifted.command("other")
    def other(x: int = typer.Option(0)) -> None:
        pass

    problems = drifted_defaults(drifted, {"pretrain": (PretrainConfig,)}, {})
    assert problems == ["pretrain --lr: default 0.0003, but the source says 0.0002",
                        "pretrain --stray: no field of (<class 'jtm.training.config.PretrainConfig'>,)"]


def test_the_default_window_is_written_once() -> None:
    """20480 appears as a number in one place of the package: jtm.configs.DEFAULT_WINDOW."""
    allowed = {"jtm/configs.py"}
    found = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "jtm").rglob("*.py")
                   if re.search(r"(?<![\w.])20_?480(?![\w.])", re.sub(r'"""[\s\S]*?"""|#.*', "", p.read_text())))
    assert set(found) <= allowed, found
    for config in examples():
        if hasattr(config, "window"):
            assert field_default(type(config), "window") == DEFAULT_WINDOW


def test_load_config_checks_nested_dataclasses_by_key_path() -> None:
    @dataclasses.dataclass
    class Outer:
        inner: CPCConfig
        name: str = "x"

    with pytest.raises(ConfigError, match="f.json: inner.negatives must be an integer, got string"):
        load_config(Outer, {"inner": {"negatives": "many"}}, "f.json")
    assert load_config(Outer, {"inner": {}}, "f.json").inner == CPCConfig()
