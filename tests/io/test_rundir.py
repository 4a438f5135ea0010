"""Staged output directories: complete or absent, kept only for a checkpoint, one writer at a time."""

import pytest

from codelora.errors import CodeloraError
from codelora.io.rundir import partial_dir, staged_run_dir


def test_a_failed_run_leaves_nothing_behind(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with staged_run_dir(out) as d:
            (d / "adapter_model.safetensors").write_text("half")
            raise RuntimeError("boom")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_an_existing_run_needs_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    with pytest.raises(CodeloraError, match="--overwrite"):
        with staged_run_dir(out):
            pass
    with staged_run_dir(out, overwrite=True) as d:
        (d / "new.txt").write_text("x")
    assert [p.name for p in out.iterdir()] == ["new.txt"]


def test_an_interrupted_run_with_a_checkpoint_is_kept_for_resume(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        with staged_run_dir(out) as d:
            (d / "checkpoints" / "step-00000002").mkdir(parents=True)
            raise KeyboardInterrupt
    assert not out.exists() and (partial_dir(out) / "checkpoints").is_dir()
    with pytest.raises(CodeloraError, match="--resume"):
        with staged_run_dir(out):
            pass
    with staged_run_dir(out, resume=True) as d:
        assert (d / "checkpoints" / "step-00000002").is_dir()
        (d / "adapter_model.safetensors").write_text("final")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_model.safetensors"]  # checkpoints and lock gone


def test_a_second_writer_is_refused(tmp_path):
    out = tmp_path / "run"
    with staged_run_dir(out):
        with pytest.raises(CodeloraError, match="another codelora process is writing"):
            with staged_run_dir(out, resume=True):
                pass
