"""The layering of pyproject.toml's import-linter contracts holds, and the checker really checks.

    cli > experiments > serving | evaluation | export | training > decoding > models > data | tracking > io | config | hub > errors | console
"""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(cwd / "src"), "PATH": "/usr/bin:/bin"})


def test_the_import_contracts_hold():
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in r.stdout


def test_a_forbidden_import_breaks_them(tmp_path):
    """data must not load models: one such import in a copy of the tree fails the check, naming it."""
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    split = copy / "src" / "codelora" / "data" / "split.py"
    split.write_text(split.read_text() + "\nfrom codelora.models.sources import load_tokenizer  # noqa\n")
    r = lint_imports(copy)
    assert r.returncode == 1 and "codelora.data.split -> codelora.models.sources" in r.stdout, r.stdout[-3000:]
