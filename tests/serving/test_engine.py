"""One base model, adapters attached once and switched per request: outputs must match what each
adapter gives on its own, and a refused adapter must leave the model untouched."""

import json

import pytest
import torch

from adapters_helpers import save_other_base_model, save_plain_peft
from codelora.config import GenerateConfig, ModelConfig
from codelora.io.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from codelora.serving.adapter_set import AdapterLoadError
from codelora.serving.engine import ContextLengthError, Engine, GenerationJob
from codelora.serving.registry import AdapterRegistry, UnknownAdapterError

QUESTION = "Write a Python function add2(x) that applies + 2 to x."


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("registry")
    save_plain_peft(tiny_model_dir, root / "a", seed=1)
    save_plain_peft(tiny_model_dir, root / "b.v2", targets=("q_proj", "k_proj", "v_proj", "o_proj"), seed=2)
    other = save_other_base_model(tmp_path_factory.mktemp("other_base"))
    save_plain_peft(other, root / "other")
    save_plain_peft(other, root / "unlabelled")
    cfg = root / "unlabelled" / ADAPTER_CONFIG
    cfg.write_text(json.dumps(json.loads(cfg.read_text()) | {"base_model_name_or_path": None}))
    save_plain_peft(tiny_model_dir, root / "nan", seed=4)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(root / "nan" / ADAPTER_WEIGHTS))
    key = sorted(k for k in weights if "lora_B" in k)[0]
    weights[key][0, 0] = float("nan")
    save_file(weights, str(root / "nan" / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return root


@pytest.fixture(scope="module")
def engine(registry, tiny_model_dir):
    return Engine(ModelConfig(name=str(tiny_model_dir)), AdapterRegistry(registry), "cpu")


def _reference(tiny_model_dir, adapter_dir, ids, n):
    """What plain transformers (+ peft for one adapter alone) generate greedily."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from codelora.data.prompts import PromptFormat
    from transformers import AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    stop = PromptFormat(AutoTokenizer.from_pretrained(tiny_model_dir)).stop_ids
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = model.eval().generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                                    eos_token_id=stop, pad_token_id=stop[0])
    return out[0, len(ids):].tolist()


def test_switching_adapters_gives_each_adapters_own_output(engine, registry, tiny_model_dir):
    ids = engine.question_ids(QUESTION)
    base1 = engine.generate(GenerationJob(ids, None, GenerateConfig(12)))
    a1 = engine.generate(GenerationJob(ids, "a", GenerateConfig(12)))
    b1 = engine.generate(GenerationJob(ids, "b.v2", GenerateConfig(12)))
    base2 = engine.generate(GenerationJob(ids, None, GenerateConfig(12)))
    a2 = engine.generate(GenerationJob(ids, "a", GenerateConfig(12)))
    assert base1.token_ids == base2.token_ids == _reference(tiny_model_dir, None, ids, 12)
    assert a1.token_ids == a2.token_ids == _reference(tiny_model_dir, registry / "a", ids, 12)
    assert b1.token_ids == _reference(tiny_model_dir, registry / "b.v2", ids, 12)
    assert a1.token_ids != base1.token_ids and b1.token_ids != a1.token_ids  # the adapters really act
    loaded = engine.adapters.loaded
    assert set(loaded) >= {"a", "b.v2"} and a1.model == "a" and base1.model == "base"
    assert loaded["a"].peft_name != loaded["b.v2"].peft_name


def test_requests_on_different_adapters_share_one_batch(engine, registry, tiny_model_dir):
    """Submitted together, base and two adapters decode in the same steps and still give each
    one's own greedy tokens (plain transformers + peft, one at a time, is the reference)."""
    ids = engine.question_ids(QUESTION)
    names = [None, "a", "b.v2", "a", None, "b.v2"]
    for name in names:  # attach first, so that all six are queued before the first step
        engine.adapters.get(name) if name else None
    import threading

    ends, widest = threading.Event(), []
    seqs = []
    def watch(seq, piece):
        widest.append(len(engine.batcher.running))
        if all(s.done for s in seqs) and len(seqs) == len(names):
            ends.set()
    with engine._wake:  # hold the engine thread back until all are queued
        seqs += [engine.submit(GenerationJob(ids, n, GenerateConfig(12)), watch) for n in names]
    ends.wait(60)
    refs = {n: _reference(tiny_model_dir, registry / n if n else None, ids, 12) for n in set(names)}
    assert [s.tokens for s in seqs] == [refs[n] for n in names]
    assert max(widest) == len(names)  # all in one batch


def _lora_module_count(engine):
    return sum(1 for n, _ in engine.base.named_modules() if n.endswith("lora_A"))


@pytest.mark.parametrize("name, message", [("other", "was trained on base model"),
                                           ("unlabelled", "does not fit this base model"),
                                           ("nan", "NaN/Inf")])
def test_refused_adapters_leave_the_model_untouched(engine, name, message):
    engine.adapters.get("a")
    before = _lora_module_count(engine)
    with pytest.raises(AdapterLoadError, match=message):
        engine.adapters.get(name)
    assert _lora_module_count(engine) == before
    assert name not in engine.adapters.loaded and message.split()[0] in engine.adapters.failed[name]
    assert engine.generate(GenerationJob(engine.question_ids(QUESTION), "a", GenerateConfig(4))).completion_tokens >= 1


def test_context_length_is_checked_before_generating(engine):
    ids = engine.question_ids(QUESTION)
    with pytest.raises(ContextLengthError, match=f"lower max_new_tokens to {512 - len(ids)}"):
        engine.generate(GenerationJob(ids, None, GenerateConfig(512)))
    with pytest.raises(ContextLengthError, match="shorten the prompt"):
        engine.generate(GenerationJob(list(range(5)) * 110, None, GenerateConfig(10)))


def test_without_a_registry_adapters_are_unknown(tiny_model_dir):
    engine = Engine(ModelConfig(name=str(tiny_model_dir)), None, "cpu")
    with pytest.raises(UnknownAdapterError, match="without --adapters"):
        engine.generate(GenerationJob(engine.question_ids(QUESTION), "a", GenerateConfig(4)))
    assert engine.generate(GenerationJob(engine.question_ids(QUESTION), None, GenerateConfig(3))).completion_tokens <= 3


def test_ask_refuses_an_adapter_of_another_base(registry, tiny_model_dir):
    from cli_helpers import run_cli

    r = run_cli("ask", "hi", "--model", tiny_model_dir, "--adapter", registry / "other", "--max-new-tokens", "2")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("codelora: error: adapter ")
    assert "was trained on base model" in r.stderr
    r = run_cli("ask", "hi", "--model", tiny_model_dir, "--adapter", registry / "unlabelled", "--max-new-tokens", "2")
    assert r.returncode == 1 and "does not fit this base model" in r.stderr and "Traceback" not in r.stderr
