"""config.py: the schema (defaults, help, allowed values, sections) and how it is validated."""

import dataclasses
import typing

import pytest

from codelora.config import (SCHEDULERS, SECTION_NAMES, EvalCommandConfig, EvalConfig, ExportConfig, GenerateConfig,
                             ImproveConfig, MergeConfig, RunConfig, ServeConfig, validated)
from codelora.config_parse import parse_config
from codelora.errors import ConfigError


def test_defaults_are_the_documented_ones():
    cfg = validated(RunConfig(), "")
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 32, 0.0)  # dropout costs ~11% of a CPU step
    assert (cfg.train.precision, cfg.train.gradient_checkpointing, cfg.model.quantize) == ("auto", False, "none")
    assert (cfg.train.save_every, cfg.train.keep_checkpoints, cfg.train.max_batch_tokens) == (50, 2, 0)
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.model.name == "smollm2-135m" and cfg.model.trust_remote_code is False
    assert cfg.data.source == "flytech/python-codes-25k"
    assert (cfg.data.val_fraction, cfg.data.test_fraction) == (0.1, 0.1)
    assert parse_config({}) == cfg


@pytest.mark.parametrize("data, fragment", [
    ({"lora": {"r": 0}}, "lora.r must be at least 1, got 0; try 8 or 16"),
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
    ({"eval": {"sandbox_memory_mb": 0}}, "eval.sandbox_memory_mb must be at least 1, got 0"),
])
def test_bad_values_name_the_field(data, fragment):
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    assert fragment in str(e.value)


def test_sections_are_derived_from_the_dataclasses():
    assert list(SECTION_NAMES.values()) == ["model", "data", "data.clean", "lora", "train", "generate", "eval"]
    # a section validated alone is named by its place in a run config
    with pytest.raises(ConfigError, match=r"^generate.top_p must be in \(0, 1\]"):
        validated(GenerateConfig(top_p=0))
    with pytest.raises(ConfigError, match=r"^data.limit must be at least 1"):  # a RunConfig: each section
        validated(RunConfig(data=dataclasses.replace(RunConfig().data, limit=0)), "")
    with pytest.raises(ConfigError, match=r"^improve.generate.top_p must be in"):  # and named by their place
        validated(ImproveConfig(generate=GenerateConfig(top_p=0)), "improve")
    with pytest.raises(ConfigError, match=r"^--max-stops must be at least 1"):  # a CLI-only section: by its flag
        validated(ServeConfig(max_stops=0), "--")


def test_improve_reuses_the_generate_and_eval_sections():
    cfg = ImproveConfig()
    assert (cfg.generate.max_new_tokens, cfg.generate.temperature, cfg.generate.top_p) == (256, 0.8, 0.95)
    assert (cfg.eval.batch_size, cfg.eval.timeout, cfg.eval.precision) == (16, 10.0, "fp32")
    assert not {"max_new_tokens", "temperature", "top_p", "batch_size", "timeout"} & {
        f.name for f in dataclasses.fields(ImproveConfig)}
    with pytest.raises(ConfigError, match="improve.eval.samples does not apply to improve"):
        validated(ImproveConfig(eval=EvalConfig(samples=4)), "improve")
    with pytest.raises(ConfigError, match="improve.generate.temperature must be positive"):
        validated(ImproveConfig(generate=GenerateConfig(temperature=0.0)), "improve")


def test_sandbox_limits_stop_count_and_eval_folder_are_config_fields():
    from codelora.evaluation.sandbox import Limits

    assert Limits() == Limits.of(EvalConfig()) and (Limits().memory_mb, Limits().processes, Limits().file_mb) == (
        1024, 32, 8)
    ec = EvalConfig(timeout=3, sandbox_memory_mb=512, sandbox_processes=4, sandbox_file_mb=2)
    assert Limits.of(ec) == Limits(timeout_s=3, memory_mb=512, processes=4, file_mb=2)
    assert ServeConfig().max_stops == 8 and EvalCommandConfig().out == "runs/eval-{name}"


@pytest.mark.parametrize("cls", [RunConfig, ServeConfig, MergeConfig, ExportConfig, ImproveConfig, EvalCommandConfig])
def test_every_field_carries_its_help(cls):
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

    def flags(command):
        return {a.option_strings[0]: a for a in sub[command]._actions if a.option_strings}

    run_flags = flags("run")
    assert run_flags["--task"].choices == ("causal-lm", "seq2seq", "classification")
    assert run_flags["--lr"].help.startswith("peak learning rate") and run_flags["--lr"].type is float
    assert f"(default: {GenerateConfig().max_new_tokens})" in flags("ask")["--max-new-tokens"].help
    serve_flags = flags("serve")
    assert f"(default: {ServeConfig().max_queue})" in serve_flags["--max-queue"].help
    assert "(default: 8)" in serve_flags["--max-stops"].help and serve_flags["--max-stops"].type is int
    eval_flags = flags("eval")
    assert "(default: runs/eval-{name})" in eval_flags["--out"].help
    assert "(default: 1024)" in eval_flags["--sandbox-memory-mb"].help
    assert {"--sandbox-processes", "--sandbox-file-mb"} <= set(eval_flags)


def test_every_scheduler_choice_builds_in_transformers():
    import torch
    from transformers import get_scheduler

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    for name in SCHEDULERS:
        assert get_scheduler(name, opt, num_warmup_steps=1, num_training_steps=10) is not None, name
