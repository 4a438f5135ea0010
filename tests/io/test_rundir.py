"""The run directory: its names, staged outputs (complete or absent, kept only for a checkpoint,
one writer at a time), directories continued in place, and chunked stages that survive a kill."""

import json
import time
from pathlib import Path

import pytest

from codelora.errors import CodeloraError
from codelora.io.rundir import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, CHECKPOINTS, CONFIG, EVAL_REPORT, EXEC_REPORT, LABELS,
                                LOSS_LOG, MANIFEST, MODEL_CARD, SECONDS, ChunkedStage, RunDir, checkpoint_name,
                                continued_dir, has_checkpoint, partial_dir, stage_seconds, staged_run_dir, step_dirs)


def test_a_failed_run_leaves_nothing_behind(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with staged_run_dir(out) as d:
            (d / ADAPTER_WEIGHTS).write_text("half")
            raise RuntimeError("boom")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_an_existing_run_needs_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / MANIFEST).write_text("{}")
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
            (d / CHECKPOINTS / checkpoint_name(2)).mkdir(parents=True)
            raise KeyboardInterrupt
    assert not out.exists() and (partial_dir(out) / CHECKPOINTS).is_dir()
    with pytest.raises(CodeloraError, match="--resume"):
        with staged_run_dir(out):
            pass
    with staged_run_dir(out, resume=True) as d:
        assert (d / CHECKPOINTS / checkpoint_name(2)).is_dir()
        (d / ADAPTER_WEIGHTS).write_text("final")
    assert sorted(p.name for p in out.iterdir()) == [ADAPTER_WEIGHTS]  # checkpoints and lock gone


def test_a_second_writer_is_refused(tmp_path):
    out = tmp_path / "run"
    with staged_run_dir(out):
        with pytest.raises(CodeloraError, match="another codelora process is writing"):
            with staged_run_dir(out, resume=True):
                pass


# --- the names and reading a run --------------------------------------------------------------------


def test_the_names_on_disk_are_what_others_read():
    """peft and the Hub read the adapter files and README.md; old runs, users' scripts and the docs
    name the rest. Written out here on purpose: renaming one is a format change, not a refactor."""
    assert (MANIFEST, CONFIG, ADAPTER_CONFIG, ADAPTER_WEIGHTS, MODEL_CARD, EVAL_REPORT, EXEC_REPORT, LOSS_LOG) == (
        "manifest.json", "config.yaml", "adapter_config.json", "adapter_model.safetensors", "README.md",
        "eval_report.json", "exec_report.json", "loss_log.jsonl")
    assert (CHECKPOINTS, checkpoint_name(12), partial_dir("runs/demo").name) == (
        "checkpoints", "step-00000012", "demo.partial")


def test_a_run_dir_names_its_files_and_reads_them(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run / LABELS == tmp_path / "run" / LABELS and run.partial == tmp_path / "run.partial"
    assert not run.is_complete() and not run.has_config() and not run.has_adapter()
    assert run.read_json(EVAL_REPORT) is None
    run.path.mkdir()
    run.adapter_config.write_text("{}")
    assert not run.has_adapter()  # the weights are missing
    run.adapter_weights.write_text("w")
    run.config.write_text("seed: 1\n")
    run.manifest.write_text(json.dumps({"train": {"steps": 3}}))
    assert run.has_adapter() and run.has_config() and run.is_complete()
    assert run.read_manifest() == run.read_json(MANIFEST) == {"train": {"steps": 3}}


def test_checkpoint_dirs_sort_by_step(tmp_path):
    root = RunDir(tmp_path).checkpoints
    for step in (10, 2, 100):
        (root / checkpoint_name(step)).mkdir(parents=True)
    (root / "notes.txt").write_text("not a checkpoint")
    assert [p.name for p in step_dirs(root)] == [checkpoint_name(s) for s in (2, 10, 100)]
    assert has_checkpoint(tmp_path) and not has_checkpoint(tmp_path / "elsewhere")


# --- a directory continued in place --------------------------------------------------------------


def test_a_continued_dir_keeps_its_settings_and_refuses_others(tmp_path):
    out = tmp_path / "job"
    assert continued_dir(out, "job.yaml", "a: 1\n", False, "a job") is False
    (out / "result.json").write_text("{}")
    assert continued_dir(out, "job.yaml", "a: 1\n", False, "a job") is True  # same settings: continued
    assert (out / "result.json").is_file()
    with pytest.raises(CodeloraError, match=r"holds a job with other settings; pass --overwrite to start over"):
        continued_dir(out, "job.yaml", "a: 2\n", False, "a job")
    assert continued_dir(out, "job.yaml", "a: 2\n", True, "a job") is False  # overwrite: cleared
    assert sorted(p.name for p in out.iterdir()) == ["job.yaml"]


def test_a_continued_dir_does_not_take_over_another_directory(tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    with pytest.raises(CodeloraError, match="already exists and is not empty; pass --overwrite or choose another out"):
        continued_dir(out, "job.yaml", "a: 1\n", False, "a job")
    assert continued_dir(out, "job.yaml", "a: 1\n", True, "a job") is False
    assert not (out / "mine.txt").exists()


# --- a chunked stage ----------------------------------------------------------------------------------


def _squares(calls):
    def work(i, progress):
        calls.append((i, progress))
        return {f"t{i}": i * i}
    return work


def test_a_chunked_stage_runs_each_chunk_once_and_merges_in_order(tmp_path):
    stage = ChunkedStage(tmp_path / "stage", 3, "work")
    calls = []
    assert stage.run(_squares(calls)) == {"t0": 0, "t1": 1, "t2": 4}
    assert calls == [(0, "chunk 1/3"), (1, "chunk 2/3"), (2, "chunk 3/3")]
    assert stage.pending() == [] and stage_seconds(stage.d)["work"] >= 0
    calls.clear()
    assert ChunkedStage(stage.d, 3, "work").run(_squares(calls)) == {"t0": 0, "t1": 1, "t2": 4}
    assert calls == []  # every chunk present: nothing is redone


def test_a_chunk_killed_midway_is_redone_and_leaves_no_half_result(tmp_path):
    stage = ChunkedStage(tmp_path / "stage", 3, "work")
    calls = []
    squares = _squares(calls)

    def dies_in_chunk_1(i, progress):
        if i == 1:
            raise KeyboardInterrupt  # a kill: the chunk's result is never written
        return squares(i, progress)

    with pytest.raises(KeyboardInterrupt):
        stage.run(dies_in_chunk_1)
    assert stage.pending() == [1, 2] and sorted(p.name for p in stage.d.iterdir()) == ["chunk-0000.json", SECONDS]
    calls.clear()
    assert stage.run(squares) == {"t0": 0, "t1": 1, "t2": 4}
    assert calls == [(1, "chunk 1/2"), (2, "chunk 2/2")]  # chunk 0 kept, the killed chunk redone
    assert not list(stage.d.glob("*.tmp"))


def test_a_chunk_result_is_written_atomically(tmp_path, monkeypatch):
    """The result goes to a temporary file renamed over the chunk's file: a kill while writing
    leaves the chunk absent (redone), never a truncated chunk that would be read as done."""
    stage = ChunkedStage(tmp_path / "stage", 1, "work")

    def dies_while_renaming(self, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "replace", dies_while_renaming)
    with pytest.raises(KeyboardInterrupt):
        stage.run(lambda i, progress: {"t0": 0})
    monkeypatch.undo()
    assert stage.pending() == [0] and (stage.d / "chunk-0000.json.tmp").is_file()
    assert stage.run(lambda i, progress: {"t0": 0}) == {"t0": 0}


def test_seconds_sum_over_attempts(tmp_path):
    d = tmp_path / "stage"
    assert stage_seconds(d) == {}

    def slow(i, progress):
        time.sleep(0.2)
        if i == 1 and not (d / "killed").exists():
            (d / "killed").touch()
            raise KeyboardInterrupt
        return {}

    with pytest.raises(KeyboardInterrupt):
        ChunkedStage(d, 2, "a").run(slow)  # chunk 0 counts, the killed chunk 1 does not
    ChunkedStage(d, 2, "a").run(slow)
    assert 0.4 <= stage_seconds(d)["a"] < 5
