"""Reading configs: YAML files and `--set key=value` into the dataclasses of config.py.

A mapping is checked field by field against the dataclass annotations (ints pass for floats,
"2e-4" read by YAML 1.1 as a string passes for a float), unknown keys are refused naming the
fields known there, and the result is validated (config.validated: choices, bounds, cross-field
rules). config.py holds what a config is; this module how one is read and written.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from codelora.config import ImproveConfig, RunConfig, subsections, validated
from codelora.errors import ConfigError

# Fields that moved; old run directories' config.yaml files still read (dotted old -> new).
RENAMED = {"eval.max_new_tokens": "generate.max_new_tokens"}
# improve fields that moved into its generate / eval sections: refused with their new place
# (docs/decisions.md: nothing codelora wrote needs the old spelling, and one spelling has no precedence rule)
IMPROVE_MOVED = {"max_new_tokens": "generate.max_new_tokens", "temperature": "generate.temperature",
                 "top_p": "generate.top_p", "batch_size": "eval.batch_size", "timeout": "eval.timeout",
                 "eval_precision": "eval.precision"}


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return `value` if it matches the annotation `tp` (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{where} has the wrong type: got {value!r}, expected {_type_name(tp)}"
        )
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return {_check_type(k, key_tp, f"{where} key"): _check_type(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "2e-4" as a string
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}")
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _from_dict(cls: type, data: Any, prefix: str, base: Any = None) -> Any:
    """A `cls` from `data`; fields not given keep those of `base` (a section's own default, e.g.
    improve's generate section samples at 0.8), else the class defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config field '{where}'; known fields here: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _from_dict(tp, value if value is not None else {}, f"{where}.", fields[key].default_factory())
        else:
            kwargs[key] = _check_type(value, tp, where)
    return cls(**kwargs) if base is None else dataclasses.replace(base, **kwargs)


def parse_config(data: dict[str, Any]) -> RunConfig:
    """Build a validated RunConfig from a nested mapping (as read from YAML)."""
    return validated(_from_dict(RunConfig, _renamed(data or {}), ""), "")


def _renamed(data: dict[str, Any]) -> dict[str, Any]:
    """Move fields of RENAMED to their new place (a value given at the new place wins)."""
    data = dict(data)
    for old, new in RENAMED.items():
        (section, name), (new_section, new_name) = old.split("."), new.split(".")
        if isinstance(data.get(section), dict) and name in data[section]:
            rest = dict(data[section])
            value = rest.pop(name)
            data[section] = rest
            target = dict(data.get(new_section) or {})
            target.setdefault(new_name, value)
            data[new_section] = target
    return data


def parse_improve_config(data: dict[str, Any]) -> ImproveConfig:
    """A validated ImproveConfig from a mapping (an improve YAML file); errors name `improve.FIELD`."""
    for old in data or {}:
        if old in IMPROVE_MOVED:
            section, name = IMPROVE_MOVED[old].split(".")
            raise ConfigError(f"improve.{old} is now improve.{section}.{name}: write it as "
                              f"`{section}: {{{name}: ...}}` (or --set {section}.{name}=...)")
    return validated(_from_dict(ImproveConfig, data or {}, "improve."), "improve")


def set_improve_field(data: dict[str, Any], key: str, value: Any) -> None:
    """`codelora improve --set`: a field (rounds=1), a field of a section (generate.temperature=1.0)
    or a training override (set.train.lr=1e-4: a key of the `set` mapping, dots and all)."""
    head = key.split(".")[0]
    if head == "set" and "." in key:
        data["set"] = {**(data.get("set") or {}), key[4:]: value}
        return
    sections = subsections(ImproveConfig)
    if "." in key and head not in sections:
        raise ConfigError(f"--set {key}: improve fields are top-level (rounds, samples, ...) or in its sections "
                          f"({', '.join(sections)}); for the training config use --set set.{key}=...")
    set_dotted(data, key, value)


def load_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {p} is not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    except RecursionError:
        raise ConfigError(f"config file {p} is nested too deeply to read") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte {e.start})") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(data).__name__}")
    return data or {}


def flatten_config(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config mapping as {dotted field: value}; `data.categories` (a mapping that is one field)
    stays whole. The inverse of `set_dotted` over every field."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and k != "categories":
            out |= flatten_config(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict; the value is checked later against the dataclasses."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        if node.get(part) is None:  # absent, or an empty section in YAML
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {key}: {part} is not a section")
    node[parts[-1]] = value


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse `--set key=value`; the value is read as YAML (so 1e-4, true, [a, b] work)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value (for example train.lr=1e-4), got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    except RecursionError:
        raise ConfigError(f"--set {key.strip()}=...: the value is nested too deeply to read") from None
    return key.strip(), value


def dump_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
