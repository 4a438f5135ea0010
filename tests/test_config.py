from pathlib import Path

import pytest

import dataclasses

from codelora.config import (SCHEDULERS, GenerateConfig, ImproveConfig, MergeConfig, RunConfig, ServeConfig, load_config_file,
                             parse_assignment, parse_config, set_dotted)
from codelora.errors import ConfigError

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml") if p.name != "improve.yaml")
IMPROVE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "improve.yaml"


def test_defaults_are_the_documented_ones():
    cfg = parse_config({})
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 32, 0.0)  # dropout costs ~11% of a CPU step
    assert (cfg.train.precision, cfg.train.gradient_checkpointing, cfg.model.quantize) == ("auto", False, "none")
    assert (cfg.train.save_every, cfg.train.keep_checkpoints, cfg.train.max_batch_tokens) == (50, 2, 0)
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.model.name == "smollm2-135m" and cfg.model.trust_remote_code is False
    assert cfg.data.source == "flytech/python-codes-25k"
    assert (cfg.data.val_fraction, cfg.data.test_fraction) == (0.1, 0.1)


def test_nested_values_parse_and_coerce():
    cfg = parse_config({"lora": {"r": 4, "alpha": 8, "target_modules": "all-linear"}, "train": {"lr": "2e-4"}})
    assert cfg.lora.r == 4 and cfg.lora.alpha == 8.0 and isinstance(cfg.lora.alpha, float)
    assert cfg.lora.target_modules == "all-linear"
    assert cfg.train.lr == pytest.approx(2e-4)


@pytest.mark.parametrize("data, fragment", [
    ({"lora": {"rank": 4}}, "unknown config field 'lora.rank'"),
    ({"lora": {"r": 0}}, "lora.r must be at least 1, got 0; try 8 or 16"),
    ({"lora": {"r": "big"}}, "lora.r must be int, got 'big'"),
    ({"lora": {"r": True}}, "lora.r must be int"),
    ({"lora": {"target_modules": "attention"}}, "lora.target_modules"),
    ({"lora": {"bias": "some"}}, "lora.bias must be one of"),
    ({"train": {"lr": 0}}, "train.lr must be positive"),
    ({"data": {"test_fraction": 0.7}}, "data.test_fraction must be in (0, 0.5)"),
    ({"data": {"limit": 0}}, "data.limit must be at least 1, got 0; omit it to use all rows"),
    ({"train": {"lr": float("nan")}}, "train.lr must be positive, got nan"),
    ({"generate": {"max_new_tokens": 0}}, "generate.max_new_tokens must be at least 1, got 0"),
    ({"generate": {"top_p": 0}}, "generate.top_p must be in (0, 1]"),
    ({"train": {"scheduler": "cosine_annealing"}}, "train.scheduler must be one of cosine, linear"),
    ({"train": {"device": "gpu"}}, "train.device must be auto, cpu, cuda, cuda:N or mps; got 'gpu'"),
    ({"train": {"precision": "fp16"}}, "train.precision must be one of auto, fp32, bf16"),
    ({"model": {"task": "vision"}}, "model.task must be one of"),
    ({"eval": {"samples": 0}}, "eval.samples must be in [1, 1000], got 0"),
    ({"eval": {"samples": 10**23}}, "eval.samples must be in [1, 1000]"),
    ({"data": {"clean": {"strip_fences": "yes"}}}, "data.clean.strip_fences must be bool"),
    ({"model": "x"}, "model must be a mapping"),
])
def test_bad_values_name_the_field(data, fragment):
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


def test_the_shipped_improve_config_parses_and_names_its_command():
    from codelora.config import parse_improve_config

    cfg = parse_improve_config(load_config_file(IMPROVE_CONFIG))
    assert isinstance(cfg, ImproveConfig) and cfg.start == "runs/demo"
    assert "codelora improve configs/improve.yaml --allow-code-execution" in IMPROVE_CONFIG.read_text()[:600]


def test_shipped_configs_exist():
    assert any(p.name == "demo.yaml" for p in CONFIGS)


@pytest.mark.parametrize("cls", [RunConfig, ServeConfig, MergeConfig, ImproveConfig])
def test_every_field_carries_its_help(cls):
    import typing

    def walk(c, prefix=""):
        hints = typing.get_type_hints(c)
        for f in dataclasses.fields(c):
            yield f"{prefix}{f.name}", f
            if dataclasses.is_dataclass(hints[f.name]):
                yield from walk(hints[f.name], f"{prefix}{f.name}.")

    missing = [name for name, f in walk(cls) if len(f.metadata.get("help", "")) < 8]
    assert not missing, f"fields without help text: {missing}"


def test_cli_help_and_choices_come_from_the_config():
    from codelora.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices
    run_flags = {a.option_strings[0]: a for a in sub["run"]._actions if a.option_strings}
    assert run_flags["--task"].choices == ("causal-lm", "seq2seq", "classification")
    assert run_flags["--lr"].help.startswith("peak learning rate") and run_flags["--lr"].type is float
    ask_flags = {a.option_strings[0]: a for a in sub["ask"]._actions if a.option_strings}
    assert f"(default: {GenerateConfig().max_new_tokens})" in ask_flags["--max-new-tokens"].help
    serve_flags = {a.option_strings[0]: a for a in sub["serve"]._actions if a.option_strings}
    assert f"(default: {ServeConfig().max_queue})" in serve_flags["--max-queue"].help


def test_every_scheduler_choice_builds_in_transformers():
    import torch
    from transformers import get_scheduler

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    for name in SCHEDULERS:
        assert get_scheduler(name, opt, num_warmup_steps=1, num_training_steps=10) is not None, name


def test_a_moved_field_still_reads_from_an_old_run_config():
    cfg = parse_config({"eval": {"max_new_tokens": 64, "batch_size": 4}})
    assert cfg.generate.max_new_tokens == 64 and cfg.eval.batch_size == 4
    both = parse_config({"eval": {"max_new_tokens": 64}, "generate": {"max_new_tokens": 32}})
    assert both.generate.max_new_tokens == 32  # the new place wins
