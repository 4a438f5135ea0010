"""config_parse.py: YAML files and `--set` into the config dataclasses: types, unknown keys, moved fields."""

from pathlib import Path

import pytest

from codelora.config import ImproveConfig, RunConfig
from codelora.config_parse import (load_config_file, parse_assignment, parse_config, parse_improve_config, set_dotted,
                                   set_improve_field)
from codelora.errors import ConfigError

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml") if p.name != "improve.yaml")
IMPROVE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "improve.yaml"


def test_nested_values_parse_and_coerce():
    cfg = parse_config({"lora": {"r": 4, "alpha": 8, "target_modules": "all-linear"}, "train": {"lr": "2e-4"}})
    assert cfg.lora.r == 4 and cfg.lora.alpha == 8.0 and isinstance(cfg.lora.alpha, float)
    assert cfg.lora.target_modules == "all-linear"
    assert cfg.train.lr == pytest.approx(2e-4)


@pytest.mark.parametrize("data, fragment", [
    ({"lora": {"rank": 4}}, "unknown config field 'lora.rank'"),
    ({"lora": {"r": "big"}}, "lora.r must be int, got 'big'"),
    ({"lora": {"r": True}}, "lora.r must be int"),
    ({"data": {"clean": {"strip_fences": "yes"}}}, "data.clean.strip_fences must be bool"),
    ({"model": "x"}, "model must be a mapping"),
])
def test_wrong_types_and_unknown_keys_name_the_field(data, fragment):
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    assert fragment in str(e.value)


def test_set_assignments_read_yaml_values():
    data = {}
    for text in ("lora.r=8", "train.lr=1e-4", "lora.target_modules=[q_proj, v_proj]", "data.limit=null"):
        set_dotted(data, *parse_assignment(text))
    cfg = parse_config(data)
    assert cfg.lora.r == 8 and cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.data.limit is None
    assert cfg.train.lr == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="key=value"):
        parse_assignment("lora.r")


def test_flags_override_an_empty_yaml_section():
    data = {"lora": None}
    set_dotted(data, "lora.r", 8)
    assert parse_config(data).lora.r == 8


def test_config_file_errors(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("train:\n  lr: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config_file(deep)
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_assignment("train.lr=" + "[" * 100_000)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"out: caf\xe9\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config_file(latin)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_file(bad)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_parses(path):
    cfg = parse_config(load_config_file(path))
    assert isinstance(cfg, RunConfig)
    header = "".join(path.read_text().splitlines(keepends=True)[:12])
    assert f"codelora run configs/{path.name}" in header, "the header must give the exact run command"


def test_shipped_configs_exist():
    assert any(p.name == "demo.yaml" for p in CONFIGS)


def test_the_shipped_improve_config_parses_and_names_its_command():
    cfg = parse_improve_config(load_config_file(IMPROVE_CONFIG))
    assert isinstance(cfg, ImproveConfig) and cfg.start == "runs/demo"
    assert "codelora improve configs/improve.yaml --allow-code-execution" in IMPROVE_CONFIG.read_text()[:600]


def test_a_moved_field_still_reads_from_an_old_run_config():
    cfg = parse_config({"eval": {"max_new_tokens": 64, "batch_size": 4}})
    assert cfg.generate.max_new_tokens == 64 and cfg.eval.batch_size == 4
    both = parse_config({"eval": {"max_new_tokens": 64}, "generate": {"max_new_tokens": 32}})
    assert both.generate.max_new_tokens == 32  # the new place wins


@pytest.mark.parametrize("old, new", [("temperature", "generate.temperature"), ("top_p", "generate.top_p"),
                                      ("max_new_tokens", "generate.max_new_tokens"), ("batch_size", "eval.batch_size"),
                                      ("timeout", "eval.timeout"), ("eval_precision", "eval.precision")])
def test_an_old_flat_improve_field_names_its_new_place(old, new):
    with pytest.raises(ConfigError, match=rf"^improve.{old} is now improve.{new}: write it as") as e:
        parse_improve_config({old: 1})
    assert "\n" not in str(e.value)


def test_an_improve_section_given_in_part_keeps_improves_own_defaults():
    cfg = parse_improve_config({"generate": {"max_new_tokens": 64}, "eval": {"timeout": 5}})
    assert (cfg.generate.max_new_tokens, cfg.generate.temperature, cfg.eval.timeout) == (64, 0.8, 5.0)


def test_improve_set_takes_fields_section_fields_and_training_overrides():
    data = {"set": {"train.epochs": 2}}
    for key, value in (("rounds", 3), ("generate.top_p", 0.9), ("set.train.lr", 5e-5)):
        set_improve_field(data, key, value)
    cfg = parse_improve_config(data)
    assert (cfg.rounds, cfg.generate.top_p, cfg.generate.temperature) == (3, 0.9, 0.8)
    assert cfg.set == {"train.epochs": 2, "train.lr": 5e-5}
    with pytest.raises(ConfigError, match=r"--set train.lr: improve fields are top-level .* use --set set.train.lr="):
        set_improve_field({}, "train.lr", 1)
