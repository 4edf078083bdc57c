"""Configuration: YAML files, precedence, unknown keys, validation; every command has help."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from conftest import TINY
from purchasepred.cli import app
from purchasepred.config import Config, PrepareConfig, config_from_dict, dump_yaml, file_entry, load_config, parse_set
from purchasepred.errors import ConfigError
from purchasepred.resources import configs_dir

runner = CliRunner()
CONFIGS = sorted(configs_dir().glob("*.yaml"))


def test_configs_folder_is_not_empty() -> None:
    assert "default.yaml" in [p.name for p in CONFIGS]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_yaml_in_configs_loads(path: Path) -> None:
    cfg = load_config(config_file=path)
    assert isinstance(cfg, Config)
    # every key the file names is applied
    data = yaml.safe_load(path.read_text()) or {}
    for section, body in data.items():
        for key, value in body.items():
            got = getattr(getattr(cfg, section), key)
            assert got == value or (isinstance(value, (int, float)) and float(got) == float(value)), (section, key)


def test_default_yaml_matches_the_dataclass_defaults() -> None:
    assert load_config().to_dict() == Config().to_dict()


def test_default_yaml_is_generated_from_the_dataclasses() -> None:
    from purchasepred.config import default_yaml

    current = (CONFIGS[0].parent / "default.yaml").read_text()
    assert current == default_yaml(), "regenerate it: python -m purchasepred.config > configs/default.yaml"
    assert "  # Loss = view_loss + purchase_weight * purchase_loss" in current  # the field's docstring


def test_checkpoints_from_before_a_key_was_retired_still_load() -> None:
    from purchasepred.config import config_from_dict

    saved = Config().to_dict()
    saved["train"]["run_name"] = "old"  # written by earlier versions
    assert config_from_dict(saved).to_dict() == Config().to_dict()


def test_precedence_defaults_file_flags_set(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("prepare:\n  max_len: 10\n  eval_days: 3\n  session_gap_minutes: 15\ntrain:\n  lr: 0.01\n")
    cfg = load_config(f)
    assert (cfg.prepare.max_len, cfg.prepare.eval_days, cfg.prepare.session_gap_minutes) == (10, 3.0, 15.0)
    assert cfg.prepare.min_item_count == PrepareConfig().min_item_count  # untouched: default
    # a named flag beats the file; None means "not given"
    cfg = load_config(f, {"prepare.max_len": 20, "prepare.eval_days": None})
    assert (cfg.prepare.max_len, cfg.prepare.eval_days) == (20, 3.0)
    # --set beats both
    cfg = load_config(f, {"prepare.max_len": 20}, ["prepare.max_len=30", "train.lr=0.5"])
    assert (cfg.prepare.max_len, cfg.prepare.eval_days, cfg.train.lr) == (30, 3.0, 0.5)


def test_precedence_through_the_cli(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("prepare:\n  max_len: 5\n  eval_days: 1\n  min_item_count: 1\n")
    out = tmp_path / "p"
    result = runner.invoke(app, ["-q", "prepare", str(TINY), "--out", str(out), "--config", str(f),
                                 "--max-len", "6", "--min-item-count", "2", "--set", "prepare.max_len=4"])
    assert result.exit_code == 0, result.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["settings"] == {"session_gap_minutes": 30.0, "min_item_count": 2, "eval_days": 1.0, "max_len": 4}


def test_resolved_config_is_printed(tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", str(TINY), "--out", str(tmp_path / "p"), "--eval-days", "1",
                                 "--set", "prepare.max_len=7"])
    assert result.exit_code == 0, result.output
    assert "--max-len 7 " in result.stdout.replace("\n", " ")


@pytest.mark.parametrize(("key", "closest"), [
    ("prepare.max_lenn", "prepare.max_len"),
    ("prepare.eval_day", "prepare.eval_days"),
    ("train.purchase_wieght", "train.purchase_weight"),
    ("prepaer.max_len", "prepare.max_len"),
])
def test_unknown_key_names_the_closest(key: str, closest: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown key '{key}'.*did you mean '{closest}'"):
        load_config(sets=[f"{key}=3"])


def test_unknown_key_through_the_cli(tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", str(TINY), "--out", str(tmp_path / "p"), "--set", "prepare.max_lenn=3"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "prepare.max_lenn" in lines[0] and "did you mean 'prepare.max_len'" in lines[0]
    assert not (tmp_path / "p").exists()


def test_unknown_key_in_a_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("prepare:\n  session_gap: 10\n")
    with pytest.raises(ConfigError, match=r"unknown key 'prepare.session_gap' in .*bad.yaml.*prepare.session_gap_minutes"):
        load_config(f)


def test_invalid_values_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(sets=["prepare.max_len=0", "prepare.eval_days=-1", "model.dropout=abc", "train.loss=nope",
                          "prepare.nope=1"])
    msg = str(err.value)
    for part in ("prepare.max_len must be >= 2", "prepare.eval_days must be > 0", "model.dropout",
                 "train.loss", "unknown key 'prepare.nope'"):
        assert part in msg, part


def test_invalid_values_through_the_cli(tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", str(TINY), "--out", str(tmp_path / "p"), "--max-len", "1",
                                 "--eval-days", "0", "--session-gap", "-5"])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    for part in ("prepare.max_len", "prepare.eval_days", "prepare.session_gap_minutes"):
        assert part in lines[0]


def test_bad_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("prepare: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_set_syntax() -> None:
    assert parse_set(["prepare.max_len=7", "eval.k=[5, 10]", "prepare.memory_limit="]) == {
        "prepare.max_len": 7, "eval.k": [5, 10], "prepare.memory_limit": None,
    }
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_set(["prepare.max_len"])
    # a strptime format is not valid YAML on its own ('%' starts a directive): it stays the text written
    assert parse_set(["input.time_format=%Y-%m-%d %H:%M:%S", "input.delimiter=|"]) == {
        "input.time_format": "%Y-%m-%d %H:%M:%S", "input.delimiter": "|",
    }
    cfg = load_config(sets=["eval.k=5,10", "prepare.memory_limit=2GB", "prepare.threads=null"])
    assert (cfg.eval.k, cfg.prepare.memory_limit, cfg.prepare.threads) == ([5, 10], "2GB", None)


def test_a_named_value_is_read_in_any_case() -> None:
    """A value from a fixed list of lower-case names (input.event, train.device, train.loss) is read in
    any case and with spaces around it, also in an input.files entry; anything else stays an error."""
    cfg = load_config(sets=["input.event=View", "train.device= CPU ", "train.loss=Sampled", "prepare.eval_days=AUTO",
                            "input.files=[{match: 'orders*.csv', event: PURCHASE}]"])
    assert (cfg.input.event, cfg.train.device, cfg.train.loss, cfg.prepare.eval_days) == ("view", "cpu", "sampled", "auto")
    glob, keys, problems = file_entry(1, cfg.input.files[0])
    assert (glob, keys, problems) == ("orders*.csv", {"event": "purchase"}, [])
    with pytest.raises(ConfigError, match="input.event in --set must be one of view, cart, purchase, remove_from_cart, got 'Vue'"):
        load_config(sets=["input.event=Vue"])


def test_round_trip_through_yaml() -> None:
    cfg = load_config(sets=["prepare.max_len=9", "train.lr=0.1"])
    again = config_from_dict(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg


# --------------------------------------------------------------------------------------------------
# help


def _commands() -> list[str]:
    return sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_root_help() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in _commands():
        assert name in result.stdout


def test_prepare_and_synth_are_registered() -> None:
    assert {"prepare", "synth"} <= set(_commands())


@pytest.mark.parametrize("name", _commands())
def test_every_command_has_help(name: str) -> None:
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.stdout
    assert "Example:" in result.stdout


def test_version() -> None:
    from purchasepred import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.stdout


def test_prepare_prints_its_settings_as_the_options_that_give_them() -> None:
    from purchasepred.cli import _prepare_line

    line = _prepare_line(load_config(None, {}, ["input.schema=taobao", "prepare.threads=1"]))
    assert line == ("prepare: --session-gap 30 --max-len 50 --min-item-count 2 --eval-days auto --memory-limit 50% "
                    "--threads 1; input: --schema taobao")
    sets = ["input.user=visitorid", "input.view=[pv, click]", 'input.delimiter="\t"', "input.header=false",
            "input.time_format=%d/%m/%Y %H:%M"]
    cfg = load_config(None, {}, [*sets, "prepare.eval_days=3.5"])
    line = _prepare_line(cfg)
    assert line.startswith("prepare: --session-gap 30 --max-len 50 --min-item-count 2 --eval-days 3.5 --memory-limit 50% "
                           "(threads: all cores); input: --set input.user=visitorid --set 'input.time_format=")
    for word in ("--set 'input.view=[pv, click]'", """--set 'input.delimiter="\\t"'""", "--set input.header=false"):
        assert f" {word}" in line
    # the words after "input:" are what a shell passes on: the same mapping, read back
    words = shlex.split(line.split("; input: ", 1)[1])
    assert load_config(None, {}, words[1::2]).input == cfg.input
    assert _prepare_line(load_config(None, {}, [])).endswith("; input: detected from the header")


def test_a_mistyped_choice_is_named_with_the_closest_one() -> None:
    from purchasepred.cli import _usage_message

    pydantic = "Invalid value for '--schema': Value error, 'tabao' is not one of 'rees46', 'taobao', 'tianchi'."
    assert _usage_message(pydantic) == ("Invalid value for '--schema': 'tabao' is not one of 'rees46', 'taobao', "
                                        "'tianchi'; did you mean 'taobao'?")
    # no guess that is only as close as gpu is to cpu (a GPU user means cuda)
    device = "Invalid value for '--device': Value error, 'gpu' is not one of 'auto', 'cpu', 'cuda', 'mps'."
    assert _usage_message(device) == "Invalid value for '--device': 'gpu' is not one of 'auto', 'cpu', 'cuda', 'mps'."
    assert _usage_message("No such option: --out") == "No such option: --out"
    assert _usage_message("No such option: --out (Possible options: --quiet, --set)") == "No such option: --out"
    assert _usage_message("No such option: --epoch (Possible options: --epochs)") == (
        "No such option: --epoch; did you mean --epochs?")
    assert _usage_message("No such option: --memory (Possible options: --memory-limit)") == (
        "No such option: --memory; did you mean --memory-limit?")
