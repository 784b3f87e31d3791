"""The offline task pack: lm-eval YAML tasks whose data the project generates itself.

Linearized models lose most on recall, so the pack probes exactly that, with every request type
lm-eval has, and runs with no network:

=================  ======================  ==================================================
task               lm-eval output type     what it measures
=================  ======================  ==================================================
lin_passkey_64     generate_until          pass key ~30 tokens before the question (inside
                                           every sliding window: the control)
lin_passkey_256    generate_until          pass key 130-250 tokens back (beyond w=64 and 128)
lin_passkey_1024   generate_until          pass key 600-1000 tokens back
lin_recall_6       multiple_choice         associative recall, 6 key/value pairs (in window)
lin_recall_48      multiple_choice         multi-query associative recall, 48 pairs, queried
                                           keys 140-330 tokens back (beyond the window)
lin_cloze          loglikelihood           next word of held-out text; the word occurred
                                           earlier in the passage but not in its last 400
                                           characters (~100 tokens)
lin_ppl            loglikelihood_rolling   perplexity of the held-out documents
=================  ======================  ==================================================

Token counts are for the SmolLM2 tokenizer (other BPE tokenizers are within ~20%). The data is a
pure function of the seed and Python's own documentation (:mod:`linearize.offline_text`, held-out
documents only), so teacher and students always see identical examples. :func:`build_task_pack`
writes ``*.jsonl`` data and ``*.yaml`` task files (absolute ``data_files`` paths, so lm-eval can run
them from any working directory) plus a ``linearize_pack`` group into one directory, usable as
``lm-eval run --include_path DIR --tasks linearize_pack``.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .offline_text import heldout_documents

PACK_GROUP = "linearize_pack"
PACK_VERSION = 1
DEFAULT_SEED = 1234
EXAMPLES_PER_TASK = 100  # written to disk; runs usually take the first --limit of them


@dataclass(frozen=True)
class PackTask:
    name: str
    output_type: str
    metric: str  # the headline metric (its lm-eval results key is "metric,filter")
    filter: str
    higher_is_better: bool
    description: str


PACK_TASKS: dict[str, PackTask] = {
    t.name: t
    for t in [
        PackTask("lin_passkey_64", "generate_until", "exact_match", "first_number", True, "pass key, ~30 tokens back"),
        PackTask("lin_passkey_256", "generate_until", "exact_match", "first_number", True, "pass key, 130-250 tokens back"),
        PackTask("lin_passkey_1024", "generate_until", "exact_match", "first_number", True, "pass key, 600-1000 tokens back"),
        PackTask("lin_recall_6", "multiple_choice", "acc", "none", True, "associative recall, 6 pairs (in window)"),
        PackTask("lin_recall_48", "multiple_choice", "acc", "none", True, "multi-query recall, 48 pairs, keys 140+ tokens back"),
        PackTask("lin_cloze", "loglikelihood", "acc", "none", True, "next word of held-out text, clue beyond ~100 tokens"),
        PackTask("lin_ppl", "loglikelihood_rolling", "word_perplexity", "none", False, "held-out perplexity (per word)"),
    ]
}

# ---------------------------------------------------------------------------------------------
# data generators: each returns a list of JSON-able docs


_FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)  # ~24 SmolLM2 tokens, 90 characters: the classic passkey haystack
_FILLER_TOKENS = 24
_PASSKEY_INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about the important information there.\n"
)
_PASSKEY_QUESTION = "\nWhat is the pass key? The pass key is"


def _needle(key: str) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key. "


def passkey_docs(length: int, n: int, seed: int) -> list[dict]:
    """Haystack of ~``length`` tokens with a 5-digit pass key; the answer is the key.

    ``length <= 64`` is the in-window control (key right before the question). Otherwise the key
    sits in the first 40% of the filler, so it is at least ~0.55 * length tokens from the question.
    """
    rng = random.Random(f"passkey-{length}-{seed}")
    docs = []
    for _ in range(n):
        key = str(rng.randint(10000, 99999))
        if length <= 64:
            prompt = _needle(key) + _FILLER + _PASSKEY_QUESTION
        else:
            n_fill = max(2, (length - 60) // _FILLER_TOKENS)
            before = rng.randint(0, int(0.4 * n_fill))
            prompt = _PASSKEY_INTRO + _FILLER * before + _needle(key) + _FILLER * (n_fill - before) + _PASSKEY_QUESTION
        docs.append({"prompt": prompt, "answer": key})
    return docs


_KEYS = ["apple", "river", "stone", "cloud", "tiger", "lamp", "garden", "pencil", "window", "ocean", "bridge", "candle", "forest", "mirror", "rocket", "violin", "castle", "desert", "island", "ladder", "marble", "needle", "orange", "pepper", "planet", "rabbit", "saddle", "shadow", "silver", "spider", "summer", "tunnel", "valley", "wagon", "wheat", "wizard", "yellow", "anchor", "basket", "button", "camera", "carpet", "cherry", "copper", "dragon", "engine", "feather", "finger", "flower", "guitar", "hammer", "helmet", "jacket", "kettle", "lemon", "magnet", "meadow", "monkey", "parrot", "pillow", "pocket", "puzzle", "ribbon", "salmon", "shovel", "temple", "ticket", "tomato", "turtle", "velvet", "walnut"]


def recall_docs(n_pairs: int, n: int, seed: int, n_queries: int = 4, far: bool = False) -> list[dict]:
    """Multi-query associative recall: ``n_pairs`` "key value" lines, then ``n_queries`` lookups.

    The first ``n_queries - 1`` lookups are answered in the context (the model reads them, as in
    MQAR); the last one is scored as a 4-way choice between values that all appear in the context,
    so only binding key to value helps. ``far``: queried keys come from the first half of the
    list, i.e. at least ``n_pairs / 2`` lines (~6 tokens each) before the lookups.
    """
    rng = random.Random(f"recall-{n_pairs}-{seed}")
    docs = []
    for _ in range(n):
        keys = rng.sample(_KEYS, n_pairs)
        values = [str(v) for v in rng.sample(range(1000, 10000), n_pairs)]
        pool = list(range(n_pairs // 2)) if far else list(range(n_pairs))
        queried = rng.sample(pool, min(n_queries, len(pool)))
        lines = ["Remember the code of each word.", *(f"{k} {v}" for k, v in zip(keys, values)), "Now recall the codes."]
        lines += [f"{keys[i]} {values[i]}" for i in queried[:-1]]
        last = queried[-1]
        context = "\n".join(lines) + f"\n{keys[last]}"
        distractors = rng.sample([v for i, v in enumerate(values) if i != last], 3)
        choices = [values[last], *distractors]
        rng.shuffle(choices)
        docs.append({"context": context, "choices": choices, "gold": choices.index(values[last])})
    return docs


def _heldout_text() -> str:
    return "\n\n".join(heldout_documents())


def cloze_docs(n: int, seed: int, context_chars: int = 1200, clue_gap_chars: int = 400) -> list[dict]:
    """Next-word prediction on held-out text, LAMBADA style, at positions where the word
    (5+ letters) occurred earlier in the passage but not in its last ``clue_gap_chars`` characters."""
    text = _heldout_text()
    candidates = []
    for m in re.finditer(r"(?<=[ \n])([A-Za-z]{5,})\b", text):
        start = m.start()
        if start < context_chars:
            continue
        context = text[start - context_chars : start]
        word = m.group(1)
        if re.search(rf"\b{word}\b", context[-clue_gap_chars:]) or not re.search(rf"\b{word}\b", context):
            continue
        context = context[context.index(" ") + 1 : -1]  # start at a word boundary, drop the space
        if text[start - 1] != " " or text[start - 2].isspace():
            continue  # keep the target a plain " word" continuation of a line of prose
        candidates.append({"context": context, "target": " " + word})
    rng = random.Random(f"cloze-{seed}")
    rng.shuffle(candidates)
    return candidates[:n]


def perplexity_docs(segment_chars: int = 2000) -> list[dict]:
    """The held-out documents, cut at paragraph boundaries into segments of <= ~``segment_chars``."""
    docs = []
    for doc in heldout_documents():
        current = ""
        for para in doc.split("\n\n"):
            if current and len(current) + len(para) > segment_chars:
                docs.append({"text": current})
                current = ""
            current = f"{current}\n\n{para}" if current else para
        if current:
            docs.append({"text": current})
    return docs


def _task_data(name: str, seed: int) -> list[dict]:
    n = EXAMPLES_PER_TASK
    if name.startswith("lin_passkey_"):
        return passkey_docs(int(name.rsplit("_", 1)[1]), n, seed)
    if name == "lin_recall_6":
        return recall_docs(6, n, seed, n_queries=1)
    if name == "lin_recall_48":
        return recall_docs(48, n, seed, n_queries=4, far=True)
    if name == "lin_cloze":
        return cloze_docs(n, seed)
    if name == "lin_ppl":
        return perplexity_docs()
    raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# YAML


def _task_yaml(task: PackTask, data_file: Path) -> dict:
    config: dict = {
        "task": task.name,
        "tag": ["linearize"],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": task.output_type,
    }
    if task.output_type == "generate_until":
        config.update(
            doc_to_text="prompt",
            doc_to_target="answer",
            generation_kwargs={"until": ["\n"], "max_gen_toks": 8, "do_sample": False},
            filter_list=[
                {
                    "name": "first_number",
                    "filter": [
                        {"function": "regex", "regex_pattern": r"(\d+)", "group_select": 0},
                        {"function": "take_first"},
                    ],
                }
            ],
            metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        )
    elif task.output_type == "multiple_choice":
        config.update(
            doc_to_text="context",
            doc_to_choice="choices",
            doc_to_target="gold",
            target_delimiter=" ",
            metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        )
    elif task.output_type == "loglikelihood":
        config.update(
            doc_to_text="context",
            doc_to_target="target",
            target_delimiter="",
            metric_list=[
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
            ],
        )
    else:  # loglikelihood_rolling
        config.update(
            doc_to_text="",
            doc_to_target="text",
            # Aggregation and direction spelled out (lm-eval's defaults for these metrics): lm-eval warns about
            # every metric that leaves them to its defaults, once per evaluated model.
            metric_list=[
                {"metric": "word_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
                {"metric": "byte_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
                {"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False},
            ],
        )
    config["metadata"] = {"version": PACK_VERSION, "description": task.description}
    return config


def build_task_pack(out_dir: str | Path, tasks: list[str] | None = None, seed: int = DEFAULT_SEED) -> Path:
    """Write the pack's data (jsonl) and task YAMLs to ``out_dir``; returns its absolute path.

    ``tasks`` selects pack tasks (default all). Rebuilding is deterministic and idempotent.
    """
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = list(PACK_TASKS) if tasks is None else list(tasks)
    for name in names:
        task = PACK_TASKS[name]
        data_file = out / f"{name}.jsonl"
        data_file.write_text("".join(json.dumps(doc) + "\n" for doc in _task_data(name, seed)))
        (out / f"{name}.yaml").write_text(yaml.safe_dump(_task_yaml(task, data_file), sort_keys=False, width=1000))
    group = {"group": PACK_GROUP, "task": names, "metadata": {"version": PACK_VERSION}}
    (out / f"{PACK_GROUP}.yaml").write_text(yaml.safe_dump(group, sort_keys=False))
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m linearize.task_pack DIR``: write the pack to DIR (for ``lm-eval --include_path``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m linearize.task_pack", description=main.__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    print(build_task_pack(args.out_dir, seed=args.seed))


if __name__ == "__main__":
    main()
