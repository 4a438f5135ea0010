"""Shared fixtures: tiny random-weight models built from a config, a tiny tokenizer, tiny data.

Nothing here touches the network: the Hub is declared offline before any library is imported.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_HEAD = REPO.parent / "shared" / "data" / "python-codes-25k.head356.jsonl"
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
FUNCS = [("add", "+"), ("sub", "-"), ("mul", "*"), ("div", "/"), ("mod", "%"), ("pow", "**")]


def make_rows(n: int = 40) -> list[dict]:
    """Small instruction/input/output rows in the dataset's style (fenced code answers)."""
    rows = []
    for i in range(n):
        name, op = FUNCS[i % len(FUNCS)]
        k = i // len(FUNCS) + 2
        rows.append({
            "instruction": f"Write a Python function {name}{k}(x) that applies {op} {k} to x.",
            "input": "" if i % 3 else f"Use the number {k}.",
            "output": f"```python\ndef {name}{k}(x):\n    return x {op} {k}\n```",
        })
    for r in rows:
        r["text"] = f"{r['instruction']} {r['input']} {r['output']}"
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def build_tokenizer(chat_template: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>", "<s>"]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    corpus = [json.dumps(r) for r in make_rows(60)] * 3
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", bos_token="<s>")
    if chat_template:
        tok.chat_template = CHATML
    return tok


def build_tiny_model(tok, seed: int = 0, init_range: float = 0.02):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.bos_token_id, initializer_range=init_range)
    return LlamaForCausalLM(cfg)


def build_tiny_t5(tok, seed: int = 0):
    """A 2+2-block T5 (d_model 32, 4 heads of 8): the seq2seq fixture."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return T5ForConditionalGeneration(cfg)


def build_tiny_bert(tok, seed: int = 0):
    """A 2-block BERT encoder (hidden 32): the classification fixture (heads are added per task)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    return BertModel(cfg)


LABELS = ("add", "sub", "mul")


def make_labeled_rows(n: int = 60) -> list[dict]:
    """text/label rows whose label is a word of the text: learnable in a few steps."""
    return [{"text": f"Write a function {LABELS[i % 3]}{i} that does {LABELS[i % 3]} on x", "label": LABELS[i % 3]}
            for i in range(n)]


def _save_with_plain_tokenizer(build, path: Path) -> Path:
    tok = build_tokenizer(chat_template=False)
    build(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    return _save_with_plain_tokenizer(build_tiny_t5, tmp_path_factory.mktemp("tiny_t5"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return _save_with_plain_tokenizer(build_tiny_bert, tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session", autouse=True)
def codelora_home(tmp_path_factory):
    """One cache for the embedded model per test session (converted once, ~25 s)."""
    home = os.environ.get("CODELORA_TEST_HOME") or str(tmp_path_factory.mktemp("codelora_home"))
    os.environ["CODELORA_HOME"] = home
    return Path(home)


def _save_tiny(path: Path, chat_template: bool) -> Path:
    tok = build_tokenizer(chat_template)
    build_tiny_model(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 64) with a ChatML tokenizer, saved like any HF model."""
    return _save_tiny(tmp_path_factory.mktemp("tiny_llama"), chat_template=True)


@pytest.fixture(scope="session")
def tiny_plain_model_dir(tmp_path_factory) -> Path:
    """The same tiny model with a tokenizer that has no chat template."""
    return _save_tiny(tmp_path_factory.mktemp("tiny_llama_plain"), chat_template=False)


@dataclass
class EmbeddedBase:
    converted: bool  # this session converted the embedded GGUF into its empty cache
    stderr: str  # what the conversion printed


@pytest.fixture(scope="session")
def embedded_base(codelora_home) -> EmbeddedBase:
    """The embedded model in the session's cache, converted (~20 s) at most once per session: every
    real-model test reads the cache, and tests/models/test_sources.py checks the conversion done here."""
    import warm

    code = "from codelora.config import ModelConfig; from codelora.models.sources import resolve_model; " \
           "resolve_model(ModelConfig())"
    r = warm.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return EmbeddedBase("converting the embedded model" in r.stderr, r.stderr)


EMBEDDED_RUN_ARGS = (
    "run", "configs/demo.yaml", "--max-steps", "3",
    # the first 120 rows of the head: 96 / 12 / 12 rows (the test loss, computed for base and adapter here and
    # again by the card's snippet and the reload test, is the run's largest cost on 36 rows)
    "--set", "data.limit=120",
    # lr 5e-3: three steps change the model enough for its answers to differ from the base's
    "--set", "train.lr=0.005", "--set", "eval.limit=4", "--set", "generate.max_new_tokens=32",
    # fp32 pinned: the reload test compares with plain fp32 peft (auto may pick bf16 on this CPU)
    "--set", "train.precision=fp32",
    "--set", "eval.tasks=configs/tasks/python_basics.jsonl", "--set", "eval.tasks_limit=2",
    "--set", "eval.allow_code_execution=true",
)


@dataclass
class EmbeddedRun:
    path: Path  # the run directory, at adapters/python-qa (a folder of adapters, for serve --adapters)
    returncode: int
    stderr: str  # what was drawn on the terminal
    stdout: str


@pytest.fixture(scope="session")
def embedded_run(tmp_path_factory, embedded_base) -> EmbeddedRun:
    """`codelora run configs/demo.yaml` on the real embedded SmolLM2 (3 steps on the first 120 rows of the real
    data head, eval on its 12 test rows, answers for 4 of them and 2 tasks), its stderr on a terminal: trained once per session and shared by every
    test of the real model's run outputs (end to end, model card, merge, GGUF, web page, improve)."""
    from pty_helpers import run_command_in_pty

    if not SHARED_HEAD.is_file():
        pytest.skip(f"the real data head {SHARED_HEAD} is absent (it lives in shared/ beside the checkout)")
    out = tmp_path_factory.mktemp("embedded_run") / "adapters" / "python-qa"
    code, stderr, stdout = run_command_in_pty([sys.executable, "-m", "codelora", *EMBEDDED_RUN_ARGS, "--out", str(out)],
                                              cwd=REPO, timeout=1200)
    return EmbeddedRun(out, code, stderr, stdout)


@pytest.fixture(scope="session")
def embedded_adapter(embedded_run) -> Path:
    """The run directory of `embedded_run`, for tests that only need a real adapter on the embedded model."""
    assert embedded_run.returncode == 0, embedded_run.stderr[-3000:]
    return embedded_run.path


@pytest.fixture
def rows() -> list[dict]:
    return make_rows(40)


@pytest.fixture
def data_file(tmp_path, rows) -> Path:
    return write_jsonl(tmp_path / "rows.jsonl", rows)


@pytest.fixture
def shared_head() -> Path:
    if not SHARED_HEAD.is_file():
        pytest.skip(f"the real data head {SHARED_HEAD} is absent (it lives in shared/ beside the checkout)")
    return SHARED_HEAD
