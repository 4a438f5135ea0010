"""The layering of pyproject.toml's import-linter contracts holds, and the checker really checks.

    cli > experiments > serving | evaluation | export | training > decoding > models > data | tracking > io | config | hub > errors | console

Function-level imports follow the rule in docs/decisions.md ("Function-level imports"): the test names each stray one.
"""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "codelora"

# docs/decisions.md, "Function-level imports": what may be imported inside a function, and why.
LAZY_LIBRARIES = {  # (b) heavy or optional third-party libraries, loaded only on the paths that use them
    "torch": "heavy (1-2 s); models.sources and models.adapters, imported by light commands, load it when used",
    "transformers": "heavy (2 s); loaded by the functions that load models or tokenizers",
    "peft": "heavy (imports transformers); only where adapters are made or loaded",
    "safetensors": "weights I/O, only where weights are read or written",
    "bitsandbytes": "optional (model.quantize), absent on most machines",
    "llama_cpp": "optional extra (make install-gguf)",
    "gguf": "ships with the llama.cpp extra",
    "mlflow": "optional tracker",
    "pyarrow": "only for parquet data files",
    "datasets": "only for Hub datasets (slow import)",
    "datasketch": "only for near-duplicate search",
    "matplotlib": "only when a chart is drawn (slow import)",
    "pygments": "only when the web page highlights code",
    "huggingface_hub": "only when a model card is written",
    "sacrebleu": "only when text metrics are computed",
    "rouge_score": "only when text metrics are computed",
    "tqdm": "console is imported at CLI start-up; tqdm loads with the first bar",
}
LAZY_OWN = {  # (a) command start-up: input is checked before the heavy part loads
    ("serving/server.py", "codelora.serving.app"): "serve checks its settings and adapter folders first",
    ("serving/server.py", "codelora.serving.engine"): "serve checks its settings and adapter folders first",
}
OTHER_INTERPRETER = {  # (c) code that runs in another process imports there
    "evaluation/sandbox_runtime.py": "the sample's child and the test harness",
    "export/quantize.py": "run as `python -m codelora.export.quantize` in its own process",
}


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


def function_level_imports() -> list[tuple[str, int, str, tuple[str, ...]]]:
    """(file below codelora/, line, module, names taken from it by `from module import ...`) of every
    import statement inside a function (tests/warm_start.py preloads them)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found += [(rel, node.lineno, alias.name, ()) for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    found.append((rel, node.lineno, "." * node.level + (node.module or ""),
                                  tuple(alias.name for alias in node.names)))
    return sorted(set(found))  # a nested function's imports are walked from each enclosing one


def test_function_level_imports_follow_the_stated_rule():
    """Only cli.py's commands, the libraries in LAZY_LIBRARIES, LAZY_OWN and code run in another
    interpreter import inside a function; everything else is imported at the top of its module."""
    imports = function_level_imports()
    assert len(imports) > 20  # the walk really sees them
    stray = [f"{rel}:{line} imports {module}" for rel, line, module, _ in imports
             if rel != "cli.py" and rel not in OTHER_INTERPRETER and (rel, module) not in LAZY_OWN
             and (module.startswith((".", "codelora")) or module.split(".")[0] not in LAZY_LIBRARIES)]
    assert not stray, "import these at the top of the module (docs/decisions.md, function-level imports):\n" + \
        "\n".join(stray)
