"""Model cards (README.md) for saved converted models.

The card is built only from files in the checkpoint directory, so it can be (re)written at any
time, e.g. after an evaluation:

* ``config.json`` -- ``linearization`` (attention spec, softmax layers, recipe, teacher);
* ``linearize_report.json`` -- written by the pipeline: ``teacher``, ``recipe``,
  ``heldout_perplexity`` ({stage: ppl}), ``seconds`` ({step: s}) and, after recovery training,
  ``training`` ({"tokens": .., "seconds": ..}; ``training_tokens`` / ``training_seconds`` at the
  top level are read too);
* evaluation results: ``eval_results.json`` / ``eval_results.md`` in the directory, or a path
  given explicitly: a file, or a directory (``linearize eval``'s output: ``results/LABEL.json`` +
  ``report.md``). JSON is lm-eval's results file (one model, labelled by its file name, or
  "student") or ``{"teacher": <lm-eval results>, "student": <lm-eval results>, ...}``. A markdown
  report is embedded as is and then replaces the table built from JSON; the JSON still tells
  which tasks were evaluated.

It carries Hub metadata (``base_model``, ``license`` of the teacher where known, ``tags``,
``library_name``, ``pipeline_tag``) as YAML front matter.

A card is written to be published, so it names no local path: a teacher given as a Hub id is
linked as such, a local teacher (or data file) is named by its last path component only
(:func:`public_name`, :func:`scrub_paths`).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import yaml

from .report import format_number

CARD_FILE = "README.md"
REPORT_FILE = "linearize_report.json"
EVAL_JSON = "eval_results.json"
EVAL_MARKDOWN = "eval_results.md"

# Licenses of known teachers (Hub license identifiers); anything else is omitted from the metadata.
KNOWN_LICENSES = (
    (r"smollm", "apache-2.0"),
    (r"llama-?3\.3", "llama3.3"),
    (r"llama-?3\.2", "llama3.2"),
    (r"llama-?3\.1", "llama3.1"),
    (r"llama-?3", "llama3"),
    (r"llama-?2", "llama2"),
    (r"qwen3", "apache-2.0"),
    (r"qwen2\.5-(0\.5|1\.5|7|14|32)b", "apache-2.0"),
    (r"qwen2-(0\.5|1\.5|7)b", "apache-2.0"),
    (r"mistral-7b", "apache-2.0"),
    (r"gemma", "gemma"),
)

# Standard benchmarks of the linearization papers (SPEC 2.5) and the metric each is reported with.
STANDARD_TASKS = {
    "piqa": "acc",
    "arc_easy": "acc",
    "arc_challenge": "acc_norm",
    "hellaswag": "acc_norm",
    "winogrande": "acc",
    "mmlu": "acc",
}
METRIC_PREFERENCE = ("acc", "acc_norm", "exact_match", "f1", "mcc", "word_perplexity", "perplexity", "bleu")
LOWER_IS_BETTER = ("perplexity", "bits_per_byte", "byte_perplexity", "word_perplexity", "loss")
RECALL_TASK_WORDS = ("passkey", "needle", "recall", "mqar", "niah", "ruler")

ATTENTION_NAMES = {
    "softmax": "softmax over the head dimension (Liger)",
    "hedgehog": "learned Hedgehog maps [softmax(xW), softmax(-xW)]",
}
GATE_NAMES = {
    "key": "derived from the keys, logsigmoid(k)/{scale} per key dimension (no new parameters)",
    "learned": "learned per head, sigmoid(x W_gamma)",
    "none": "none (plain linear attention)",
}
MIX_NAMES = {
    "average": "0.5 * linear + 0.5 * window",
    "learned": "linear + alpha * window, alpha learned per head",
    "weighted-linear": "a * linear + window, a learned per head",
    "shared": "one normaliser over window softmax terms and linear terms (LoLCATs)",
}


# ----------------------------------------------------------------------------- local paths

_PATH_CHARS = r"[^\s/'\"`|,;:()<>\[\]{}]"
# An absolute or ``~`` path inside free text: starts the text or follows a space, bracket, quote, ``=``
# or comma (so ``https://host/x``, ``a/b`` ids, ``tokens/s`` and ``x / y`` are left alone).
_EMBEDDED_PATH = re.compile(
    rf"(?<![^\s(\[{{\"'`=,])(?:~[\w.-]*)?/{_PATH_CHARS}+(?:/{_PATH_CHARS}*)*"
)


def is_local_path(value: str) -> bool:
    """An absolute, ``~``, ``./`` or ``../`` path (POSIX or Windows), as opposed to a Hub id or a name."""
    text = value.strip()
    return (
        text.startswith(("/", "~", "./", "../", "\\")) or text in (".", "..")
        or re.match(r"^[A-Za-z]:[\\/]", text) is not None
    )


def public_name(value):
    """``value`` as it may be published: a local path becomes its last component, anything else is unchanged."""
    if not isinstance(value, str) or not is_local_path(value):
        return value
    name = re.split(r"[\\/]", value.strip().rstrip("/\\"))[-1]
    return name if name not in ("", ".", "..", "~") else "local"


def scrub_paths(text: str) -> str:
    """``text`` with every absolute or ``~`` path in it reduced to its last component."""
    return _EMBEDDED_PATH.sub(lambda m: public_name(m.group(0)), text)


def public_value(value):
    """A JSON-like value (a report) with local paths reduced to their last component, recursively.

    A string that is a path as a whole (a ``teacher``, any path without spaces, an existing path)
    becomes its last component; paths inside longer strings (``"/data/train.txt (plain): 12
    examples"``) are reduced where they stand.
    """
    if isinstance(value, dict):  # a teacher is always one name, spaces or not
        return {k: public_name(v) if k == "teacher" else public_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [public_value(v) for v in value]
    if isinstance(value, str):
        spaced = any(c.isspace() for c in value.strip())
        whole = is_local_path(value) and (not spaced or Path(value).expanduser().exists())
        return public_name(value) if whole else scrub_paths(value)
    return value


# ----------------------------------------------------------------------------- inputs


def teacher_license(teacher: str | None) -> str | None:
    """The Hub license id of a known teacher, from its name or its local README; None if unknown."""
    if not teacher:
        return None
    name = teacher.lower()
    for pattern, license_id in KNOWN_LICENSES:
        if re.search(pattern, name):
            return license_id
    readme = Path(teacher).expanduser() / CARD_FILE
    if readme.is_file():
        license_id = read_front_matter(readme.read_text(encoding="utf-8")).get("license")
        if isinstance(license_id, str) and license_id:
            return license_id
    return None


def is_hub_id(name: str | None) -> bool:
    return bool(name) and re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not Path(name).expanduser().exists()


def read_front_matter(text: str) -> dict:
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, flags=re.DOTALL)
    if not match:
        return {}
    data = yaml.safe_load(match.group(1))
    return data if isinstance(data, dict) else {}


def _first(mapping: dict, keys: tuple[str, ...]):
    for key in keys:
        value = mapping.get(key)
        if value is not None:
            return value
    return None


def training_summary(report: dict | None) -> dict | None:
    """Recovery training recorded in the report, or None if there was none.

    ``{"tokens", "seconds", "stages": {name: {...}}, <other scalar fields such as budget, data>}``.
    The pipeline writes ``training: {"transfer": {"tokens", "seconds", ...}, "recovery": {...},
    "budget": .., "data": ..}``; flat ``training: {"tokens", "seconds"}`` and top-level
    ``training_tokens`` / ``training_seconds`` are read too.
    """
    if not report:
        return None
    training = report.get("training") if isinstance(report.get("training"), dict) else {}
    stages = {k: v for k, v in training.items() if isinstance(v, dict) and ("tokens" in v or "seconds" in v)}

    def total(key: str):
        values = [v[key] for v in stages.values() if isinstance(v.get(key), (int, float))]
        return sum(values) if values else None

    tokens = _first(training, ("tokens", "train_tokens", "total_tokens"))
    tokens = tokens if tokens is not None else _first(report, ("training_tokens", "train_tokens"))
    tokens = tokens if tokens is not None else total("tokens")
    seconds = _first(training, ("seconds", "wall_seconds", "time_s", "wall_time"))
    seconds = seconds if seconds is not None else _first(report, ("training_seconds", "train_seconds"))
    seconds = seconds if seconds is not None else total("seconds")
    if seconds is None:
        step_times = {k: v for k, v in (report.get("seconds") or {}).items() if "train" in k.lower()}
        seconds = sum(step_times.values()) if step_times else None
    if tokens is None and seconds is None and not stages:
        return None
    others = {
        k: v for k, v in training.items()
        if k not in stages and k not in ("tokens", "seconds") and isinstance(v, (str, int, float))
    }
    return {"tokens": tokens, "seconds": seconds, "stages": stages, **others}


def _metric_of(task: str, metrics: dict) -> tuple[str, float] | None:
    """The headline metric of one lm-eval task result (``{"acc,none": 0.7, "acc_stderr,none": ..}``)."""
    values = {}
    for key, value in metrics.items():
        name = key.split(",")[0]
        if "stderr" in name or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        values.setdefault(name, float(value))
    if not values:
        return None
    preferred = STANDARD_TASKS.get(task)
    for name in ((preferred,) if preferred else ()) + METRIC_PREFERENCE:
        if name in values:
            return name, values[name]
    name = sorted(values)[0]
    return name, values[name]


def _task_results(data: dict) -> dict[str, dict] | None:
    """``results`` of an lm-eval output, or a bare ``{task: {metric: value}}`` mapping."""
    if isinstance(data.get("results"), dict):
        return data["results"]
    if data and all(isinstance(v, dict) for v in data.values()) and all(
        any(isinstance(x, (int, float)) for x in v.values()) for v in data.values()
    ):
        return data
    return None


def parse_eval_results(data: dict) -> dict[str, dict[str, tuple[str, float]]]:
    """``{model label: {task: (metric, value)}}`` from one results file (see module docstring)."""
    single = _task_results(data) if "results" in data else None
    if single is not None:
        groups = {"student": single}
    else:
        groups = {}
        for label, value in data.items():
            results = _task_results(value) if isinstance(value, dict) else None
            if results is not None:
                groups[label] = results
        if not groups:
            bare = _task_results(data)
            groups = {"student": bare} if bare else {}
    parsed = {}
    for label, results in groups.items():
        tasks = {}
        for task, metrics in results.items():
            if isinstance(metrics, dict) and (metric := _metric_of(task, metrics)) is not None:
                tasks[task] = metric
        if tasks:
            parsed[label] = tasks
    return parsed


def load_eval_results(path: str | Path | None, model_dir: Path) -> tuple[dict, str | None]:
    """(parsed JSON results, markdown table) from ``path`` (file or directory) or from ``model_dir``."""
    candidates: list[Path] = []
    if path is not None:
        path = Path(path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"evaluation results not found: {path}")
        if path.is_dir():
            layouts = [
                [path / EVAL_JSON, path / EVAL_MARKDOWN],  # this module's convention
                sorted((path / "results").glob("*.json")) + [path / "report.md"],  # linearize eval's output
                sorted(path.glob("*.json")) + sorted(p for p in path.glob("*.md") if p.name != CARD_FILE),
            ]
            candidates = next((c for c in layouts if any(f.is_file() for f in c)), [])
        else:
            candidates = [path]
    else:
        candidates = [model_dir / EVAL_JSON, model_dir / EVAL_MARKDOWN]
    parsed: dict = {}
    markdown_parts = []
    for candidate in candidates:
        if not candidate.is_file():
            continue
        if candidate.suffix == ".md":
            markdown_parts.append(candidate.read_text(encoding="utf-8").strip())
        elif candidate.suffix == ".json":
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise ValueError(f"{candidate}: not valid JSON ({err})") from None
            if isinstance(data, dict):
                own_label = candidate.stem != Path(EVAL_JSON).stem and not candidate.stem.startswith("results")
                for label, tasks in parse_eval_results(data).items():
                    if own_label and label == "student" and "results" in data:
                        label = candidate.stem  # results/LABEL.json: one model per file
                    parsed.setdefault(label, {}).update(tasks)
    return parsed, ("\n\n".join(markdown_parts) or None)


# ----------------------------------------------------------------------------- rendering


def _fmt_value(metric: str, value: float) -> str:
    if any(word in metric for word in LOWER_IS_BETTER):
        return format_number(value)
    return f"{100 * value:.1f}" if 0.0 <= value <= 1.0 else format_number(value)


def _fmt_tokens(tokens) -> str:
    tokens = float(tokens)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if tokens >= size:
            return f"{tokens / size:.3g}{unit} ({int(tokens):,})"
    return f"{int(tokens):,}"


def _fmt_seconds(seconds) -> str:
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _eval_table(parsed: dict) -> str:
    labels = list(parsed)
    teacher = next((label for label in labels if "teacher" in label.lower()), None)
    students = [label for label in labels if label != teacher]
    tasks = []
    for label in labels:
        tasks += [t for t in parsed[label] if t not in tasks]
    header = ["task", "metric"] + ([teacher] if teacher else []) + students
    with_recovery = teacher is not None and len(students) >= 1
    if with_recovery:
        header += [f"{s} / teacher" for s in students]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task in tasks:
        metric = next(parsed[label][task][0] for label in labels if task in parsed[label])
        cells = [task, metric]
        for label in ([teacher] if teacher else []) + students:
            value = parsed[label].get(task)
            cells.append(_fmt_value(metric, value[1]) if value else "-")
        if with_recovery:
            for student in students:
                t, s = parsed[teacher].get(task), parsed[student].get(task)
                lower = any(word in metric for word in LOWER_IS_BETTER)
                if t and s and t[1] and not lower:
                    cells.append(f"{100 * s[1] / t[1]:.0f}%")
                else:
                    cells.append("-")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _recipe_description(recipe: str | None) -> str | None:
    if not recipe:
        return None
    try:
        from .recipes import load_recipe

        return load_recipe(recipe).description
    except Exception:  # noqa: BLE001 - a custom recipe that is no longer around: no description
        return None


def metadata(config: dict, known_license: str | None = None) -> dict:
    """Hub front matter of a converted model's card.

    ``known_license``: used when the teacher's license cannot be determined from its name or
    README (e.g. the license an earlier card recorded for a local teacher no longer around).
    """
    lin = config.get("linearization") or {}
    teacher, recipe = lin.get("teacher"), lin.get("recipe")
    meta: dict = {}
    if is_hub_id(teacher):
        meta["base_model"] = teacher
        meta["base_model_relation"] = "finetune"
    license_id = teacher_license(teacher) or known_license
    if license_id:
        meta["license"] = license_id
    meta["library_name"] = "transformers"
    meta["pipeline_tag"] = "text-generation"
    spec = lin.get("attention") or {}
    tags = ["linearize", "linear-attention"]
    if spec.get("branches", "hybrid") != "window":
        tags.append("gated-linear-attention" if spec.get("gate", "key") != "none" else "linear-attention-hedgehog")
    if spec.get("branches", "hybrid") != "linear":
        tags.append("sliding-window-attention")
    if recipe and re.fullmatch(r"[\w.-]+", str(recipe)):
        tags.append(str(recipe))
    family = str(config.get("model_type", "")).removeprefix("linearized_")
    if family:
        tags.append(family)
    tags.append("custom_code")
    meta["tags"] = list(dict.fromkeys(tags))
    return meta


def render_model_card(
    config: dict,
    report: dict | None = None,
    eval_parsed: dict | None = None,
    eval_markdown: str | None = None,
    name: str | None = None,
    known_license: str | None = None,
) -> str:
    """The README.md text of a converted model (see module docstring for the inputs).

    Local paths (a teacher directory, a data file) appear by their last component only.
    """
    from .attention_spec import AttentionSpec

    lin = config.get("linearization") or {}
    spec = {**AttentionSpec().to_dict(), **(lin.get("attention") or {})}
    recorded_teacher = public_name(lin.get("teacher") or (report or {}).get("teacher"))
    teacher = recorded_teacher or "the teacher model"
    recipe = lin.get("recipe") or (report or {}).get("recipe")
    name = name or "-".join(x for x in (str(recorded_teacher or "").split("/")[-1], recipe) if x) or "linearized-model"
    branches = spec.get("branches", "hybrid")
    window = int(spec.get("window", 0)) if branches != "linear" else 0
    layer_types = lin.get("layer_types") or []
    n_layers = len(layer_types) or config.get("num_hidden_layers")
    softmax_layers = lin.get("softmax_layers") or []
    n_linear = (n_layers or 0) - len(softmax_layers)
    training = training_summary(report)
    if is_hub_id(teacher):
        teacher_link = f"[{teacher}](https://huggingface.co/{teacher})"
    elif lin.get("teacher") or (report or {}).get("teacher"):
        teacher_link = f"`{teacher}`"
    else:
        teacher_link = "A model (base model not recorded)"

    meta = metadata(config, known_license)
    out = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {public_name(name)}", ""]
    linear = "gated linear attention" if spec.get("gate") != "none" else "linear attention"
    what = {
        "hybrid": f"{linear} mixed with sliding-window softmax attention",
        "linear": linear,
        "window": "sliding-window softmax attention",
    }[branches]
    out += [
        f"{teacher_link} with its softmax attention replaced by {what} in {n_linear} of its {n_layers} layers, "
        f"made with `linearize` (recipe `{recipe}`). Prefill is linear in the sequence length "
        "and decoding keeps a fixed-size state per linearized layer instead of a growing KV cache.",
        "",
        "## Method",
        "",
        f"- **Base model**: {teacher_link if recorded_teacher else 'not recorded'}",
        f"- **Recipe**: `{recipe}`" + (f" -- {desc}" if (desc := _recipe_description(recipe)) else ""),
        f"- **Layers**: {n_linear} of {n_layers} linearized"
        + (f"; softmax attention kept in layers {', '.join(map(str, softmax_layers))}" if softmax_layers else ""),
    ]
    if branches != "window":
        out.append(f"- **Feature map**: {ATTENTION_NAMES.get(spec.get('feature_map'), spec.get('feature_map'))}")
        gate = GATE_NAMES.get(spec.get("gate"), str(spec.get("gate"))).format(scale=f"{spec.get('gate_scale', 16):g}")
        scaled = "; output scaled by 1/sqrt(head_dim)" if spec.get("linear_scale") == "rsqrt-head-dim" else ""
        out.append(f"- **Gate**: {gate}" + ("; output normalised" if spec.get("normalize") else "") + scaled)
    if window:
        sinks = int(spec.get("num_sinks") or 0)
        sink_text = f", {sinks} learned sinks" if sinks else ""
        out.append(f"- **Sliding window**: {window} tokens, softmax with RoPE{sink_text}")
    if branches == "hybrid":
        out.append(f"- **Mixing**: {MIX_NAMES.get(spec.get('mix'), spec.get('mix'))}")
    out.append(
        "- The teacher's weights (q/k/v/o projections, norms, MLPs, embeddings) are reused; the variant adds only "
        "small modules (gates, feature maps, sinks, mixing weights), and recovery LoRA updates are merged."
    )
    if training:
        parts = []
        if training.get("tokens") is not None:
            parts.append(f"{_fmt_tokens(training['tokens'])} tokens")
        if training.get("seconds") is not None:
            parts.append(f"{_fmt_seconds(training['seconds'])} wall time")
        out.append(f"- **Recovery training**: {', '.join(parts) or 'yes'} (adapters merged into the weights)")
        for stage, info in training["stages"].items():
            bits = [f"{_fmt_tokens(info['tokens'])} tokens" if info.get("tokens") is not None else None,
                    _fmt_seconds(info["seconds"]) if info.get("seconds") is not None else None]
            out.append(f"  - {stage}: " + ", ".join(b for b in bits if b))
        extra = {k: v for k, v in training.items() if k not in ("tokens", "seconds", "stages")}
        out += [f"  - {k}: {v}" for k, v in extra.items()]
    else:
        out.append(
            "- **Recovery training**: none recorded -- this checkpoint is a direct conversion; expect quality "
            "well below the teacher until it is trained"
        )

    out += ["", "## Evaluation", ""]
    evaluated_tasks: set[str] = set()
    ppl = (report or {}).get("heldout_perplexity") or {}
    by_length = (report or {}).get("heldout_perplexity_by_length") or {}
    other = (report or {}).get("other_source_perplexity") or {}
    if ppl:
        lengths = sorted({int(n) for reports in by_length.values() for n in reports})
        columns = [f"held-out ppl @{n} tokens" for n in lengths] or ["held-out perplexity"]
        if other:
            columns.append("second-source perplexity")
        out += ["Held-out perplexity (lower is better) at each context length, measured by the linearize pipeline:",
                "", "| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        for stage, value in ppl.items():
            if lengths:
                cells = [format_number(float(by_length[stage][str(n)]["overall"])) if str(n) in by_length.get(stage, {})
                         else "-" for n in lengths]
            else:
                cells = [format_number(float(value))]
            if other:
                cells.append(format_number(float(other[stage])) if stage in other else "-")
            out.append(f"| {stage} | " + " | ".join(cells) + " |")
        out.append("")
    if eval_parsed and not eval_markdown:
        out += ["lm-eval results (accuracies in %):", "", _eval_table(eval_parsed), ""]
    for tasks in (eval_parsed or {}).values():
        evaluated_tasks.update(tasks)
    if eval_markdown:
        out += ["Evaluation report (lm-eval):", "", eval_markdown, ""]
        evaluated_tasks.update(t for t in list(STANDARD_TASKS) + list(RECALL_TASK_WORDS) if t in eval_markdown)
    if not ppl and not eval_parsed and not eval_markdown:
        out += ["No evaluation was recorded for this checkpoint.", ""]

    model_id = name
    out += [
        "## Usage",
        "",
        "The modeling code ships with the checkpoint; no extra package is needed:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model_id = "{model_id}"  # this directory, or the Hub repo it was pushed to',
        "tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=True)",
        "model = AutoModelForCausalLM.from_pretrained(model_id, trust_remote_code=True)",
        'inputs = tokenizer("The capital of France is", return_tensors="pt")',
        "output = model.generate(**inputs, max_new_tokens=32)",
        "print(tokenizer.decode(output[0], skip_special_tokens=True))",
        "```",
        "",
        "`trust_remote_code=True` is needed for the tokenizer too, because it reads the model's config. "
        "With `linearize` installed, `import linearize` registers the model classes (no remote code needed) and "
        "its fused Triton kernels are used on GPU; without it the shipped PyTorch reference runs. "
        "Evaluate with lm-eval:",
        "",
        "```bash",
        f"lm-eval run --model hf --model_args pretrained={model_id},trust_remote_code=True --tasks piqa,arc_easy",
        "```",
        "",
        "## Limitations",
        "",
    ]
    if branches == "window":
        out.append(
            f"- **No recall beyond the window**: the linearized layers attend only to the last {window} tokens; "
            "anything older reaches them only through the layers that kept softmax attention."
        )
    elif window:
        out.append(
            f"- **Recall beyond the window**: exact retrieval works within the last {window} tokens of each "
            "linearized layer; older context survives only in a fixed-size recurrent state, so passkey / needle "
            "retrieval and associative recall degrade with distance"
            + (" (softmax layers kept: " + ", ".join(map(str, softmax_layers)) + ")." if softmax_layers else ".")
        )
    else:
        out.append(
            "- **Recall**: all context is compressed into a fixed-size recurrent state, so exact retrieval "
            "(passkey, needle, associative recall) degrades quickly with distance."
        )
    out.append(
        "- Knowledge-heavy benchmarks (MMLU) are where linearized models lose most against their teacher "
        "(Liger-GLA on Llama-3-8B, as published: MMLU 65.3 -> 43.4)."
    )
    not_evaluated = [task for task in STANDARD_TASKS if not any(task in t for t in evaluated_tasks)]
    if not any(word in t for t in evaluated_tasks for word in RECALL_TASK_WORDS):
        not_evaluated.append("long-context recall (passkey, needle, associative recall)")
    if not_evaluated:
        out.append(f"- **Not evaluated** for this checkpoint: {', '.join(not_evaluated)}.")
    out.append(
        "- Safety, bias and multilingual behaviour were not evaluated; the teacher's limitations and license apply."
    )
    return scrub_paths("\n".join(out).rstrip()) + "\n"


def write_model_card(
    model_dir: str | Path, eval_results: str | Path | None = None, name: str | None = None
) -> Path:
    """(Re)write ``model_dir/README.md`` from the files in ``model_dir`` (atomically: temp file + rename)."""
    model_dir = Path(model_dir).expanduser()
    config = json.loads((model_dir / "config.json").read_text())
    report_path = model_dir / REPORT_FILE
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    parsed, markdown = load_eval_results(eval_results, model_dir)
    previous = model_dir / CARD_FILE
    known_license = None  # what an earlier card said, for a local teacher that is no longer around
    if previous.is_file():
        known_license = read_front_matter(previous.read_text(encoding="utf-8")).get("license")
    text = render_model_card(
        config, report, parsed, markdown, name=name or model_dir.resolve().name,
        known_license=known_license if isinstance(known_license, str) else None,
    )
    fd, tmp = tempfile.mkstemp(prefix=".README.md.", dir=model_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, model_dir / CARD_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return model_dir / CARD_FILE
