"""Adapter names come from HTTP requests: only plain names inside the root resolve."""

import os

import pytest

from codelora.errors import ModelError
from codelora.io.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from codelora.serving.registry import AdapterNameError, AdapterRegistry, UnknownAdapterError


def _fake_adapter(path):
    path.mkdir(parents=True)
    (path / ADAPTER_CONFIG).write_text("{}")
    (path / ADAPTER_WEIGHTS).write_bytes(b"")
    return path


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "adapters"
    _fake_adapter(root / "good")
    _fake_adapter(root / "v1.2_final-B")
    _fake_adapter(tmp_path / "outside")
    (root / "escape").symlink_to(tmp_path / "outside")
    (root / "inner-link").symlink_to(root / "good")  # a link that stays inside is fine
    (root / "empty").mkdir()
    return root


def test_plain_names_resolve_inside_the_root(root):
    reg = AdapterRegistry(root)
    entry = reg.resolve("v1.2_final-B")
    assert entry.path == (root / "v1.2_final-B").resolve() and reg.root in entry.path.parents
    assert reg.resolve("inner-link").path == (root / "good").resolve()
    assert reg.names() == ["good", "inner-link", "v1.2_final-B"]


@pytest.mark.parametrize("name", ["../outside", "..", ".", "/etc", "a/b", "good/../good", "", "x" * 65, "a b",
                                  "bad\x00name", "é", "good\n"])
def test_refused_names(root, name):
    with pytest.raises(AdapterNameError, match="not allowed"):
        AdapterRegistry(root).resolve(name)


def test_a_symlink_leading_out_is_refused(root):
    with pytest.raises(AdapterNameError, match="outside the adapter directory"):
        AdapterRegistry(root).resolve("escape")


def test_absolute_path_of_a_real_adapter_is_refused(root, tmp_path):
    with pytest.raises(AdapterNameError):
        AdapterRegistry(root).resolve(str(tmp_path / "outside"))


def test_unknown_and_incomplete_adapters(root):
    reg = AdapterRegistry(root)
    for name in ("missing", "empty", "x" * 64):
        with pytest.raises(UnknownAdapterError, match="unknown adapter"):
            reg.resolve(name)


def test_the_root_itself_may_be_a_symlink(root, tmp_path):
    link = tmp_path / "link-to-root"
    link.symlink_to(root)
    assert AdapterRegistry(link).resolve("good").path == (root / "good").resolve()


def test_missing_root_is_one_clear_error(tmp_path):
    with pytest.raises(ModelError, match="adapter directory not found"):
        AdapterRegistry(tmp_path / "nope")
    assert os.path.exists(tmp_path)
