"""lm-eval integration: the offline task pack through the real harness, the report, left-padded
generation on converted models, ``linearize eval`` errors, and lm-eval's own CLI on a saved model.

Models are tiny random Llamas with a small BPE tokenizer trained here on Python's docs and pack
text (so the pack's contexts have about as many tokens as with a real tokenizer)."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_models import tiny_model

from linearize.cli import main
from linearize.evaluation import (
    UnknownTaskError,
    evaluate_model,
    headlines,
    resolve_tasks,
)
from linearize.report import Headline, format_number, markdown_report, recovery
from linearize.task_pack import (
    PACK_GROUP,
    PACK_TASKS,
    build_task_pack,
    passkey_docs,
    recall_docs,
)

VOCAB = 1024


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from linearize.offline_text import python_doc_documents

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    pack_text = [d["prompt"] for d in passkey_docs(256, 20, seed=0)] + [d["context"] for d in recall_docs(48, 20, seed=0)]
    tok.train_from_iterator(python_doc_documents() + pack_text, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def _converted(model):
    import linearize
    from linearize.recipes import load_recipe

    recipe = load_recipe("liger-gla")
    return linearize.linearize_model(model, recipe.attention.to_spec(), recipe.softmax_layers, recipe=recipe.name)


@pytest.fixture(scope="module")
def models(tokenizer, tmp_path_factory):
    """A tiny teacher and its converted student, in memory and saved as model directories."""
    from linearize.export import save_model

    root = tmp_path_factory.mktemp("models")
    teacher = tiny_model("llama", vocab_size=VOCAB, max_position_embeddings=2048)
    student = copy.deepcopy(teacher)
    out = _converted(student)
    student = out if out is not None else student
    teacher.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    save_model(student, tokenizer, root / "student")
    return {"teacher": teacher, "student": student, "teacher_dir": root / "teacher", "student_dir": root / "student"}


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    return build_task_pack(tmp_path_factory.mktemp("pack"))


# --------------------------------------------------------------------------- task pack (no model)


def test_pack_is_deterministic_with_absolute_paths_and_far_needles(pack, tokenizer, tmp_path):
    import yaml

    for name, task in PACK_TASKS.items():
        config = yaml.safe_load((pack / f"{name}.yaml").read_text())
        data_file = Path(config["dataset_kwargs"]["data_files"]["test"])
        assert data_file.is_absolute() and data_file.is_file(), name
        assert config["output_type"] == task.output_type
    assert yaml.safe_load((pack / f"{PACK_GROUP}.yaml").read_text())["task"] == list(PACK_TASKS)
    again = build_task_pack(tmp_path / "again")
    for name in PACK_TASKS:
        assert (again / f"{name}.jsonl").read_text() == (pack / f"{name}.jsonl").read_text(), name

    # recall really is tested beyond the sliding windows (64 / 128) except in the controls
    def tokens_back(text: str, marker: str) -> int:
        return len(tokenizer(text[text.rindex(marker) :])["input_ids"])

    for doc in passkey_docs(256, 20, seed=0) + passkey_docs(1024, 20, seed=0):
        assert doc["prompt"].count(doc["answer"]) == 2
        assert tokens_back(doc["prompt"], doc["answer"]) > 128
    assert all(tokens_back(d["prompt"], d["answer"]) < 64 for d in passkey_docs(64, 20, seed=0))
    for doc in recall_docs(48, 20, seed=0, far=True):
        key = doc["context"].rsplit("\n", 1)[1]
        answer = doc["choices"][doc["gold"]]
        assert f"\n{key} {answer}\n" in doc["context"]
        assert all(f" {c}\n" in doc["context"] for c in doc["choices"])  # distractors are in context too
        assert tokens_back(doc["context"], f"\n{key} {answer}\n") > 128


# --------------------------------------------------------------------------- names and errors


def test_task_names_resolve_and_unknown_names_fail_before_loading(tmp_path):
    assert resolve_tasks("pack") == list(PACK_TASKS)
    assert resolve_tasks("lin_cloze,paper")[:3] == ["lin_cloze", "piqa", "arc_easy"]
    with pytest.raises(UnknownTaskError, match="no_such_task"):
        resolve_tasks("lin_cloze,no_such_task")

    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["eval", str(tmp_path / "no-such-model"), "--tasks", "lin_ppl,no_such_task", "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: unknown task 'no_such_task'")
    assert "lin_passkey_64" in lines[0]  # says what is available
    assert not out.exists()  # nothing ran


# --------------------------------------------------------------------------- report


def test_report_recovery_percentages():
    teacher = [Headline("lin_recall_6", "acc", 0.5), Headline("lin_ppl", "word_perplexity", 10.0, higher_is_better=False)]
    student = [Headline("lin_recall_6", "acc", 0.4), Headline("lin_ppl", "word_perplexity", 20.0, higher_is_better=False)]
    assert recovery(student[0], teacher[0]) == pytest.approx(80.0)
    assert recovery(student[1], teacher[1]) == pytest.approx(50.0)
    assert recovery(Headline("x", "acc", 0.3), Headline("x", "acc", 0.0)) is None
    table = markdown_report([("teacher", teacher), ("student", student)])
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert rows[0] == "| task | metric | teacher | student | recovery |"
    assert rows[2] == "| lin_recall_6 | acc % ↑ | 50.0 | 40.0 | 80% |"
    assert rows[3] == "| lin_ppl | word_perplexity ↓ | 10.00 | 20.00 | 50% |"
    assert rows[4] == "| **mean recovery** | ≤ 100% per task |  |  | **65%** (2 of 2 tasks) |"


def test_mean_recovery_is_capped_per_task_and_says_what_it_covers():
    teacher = [Headline("lin_recall_6", "acc", 0.5), Headline("lin_cloze", "acc", 0.4),
               Headline("lin_ppl", "word_perplexity", 10.0, higher_is_better=False),
               Headline("lin_passkey_64", "exact_match", 0.0)]
    student = [Headline("lin_recall_6", "acc", 0.75), Headline("lin_cloze", "acc", 0.2),
               Headline("lin_ppl", "word_perplexity", 87550673606432224.0, higher_is_better=False),
               Headline("lin_passkey_64", "exact_match", 0.1)]
    table = markdown_report([("teacher", teacher), ("student", student)])
    rows = {line.split(" | ")[0][2:]: line for line in table.splitlines() if line.startswith("|")}
    assert rows["lin_recall_6"].endswith("| 75.0 | 150% |")  # the row shows the measured recovery
    assert rows["lin_ppl"] == "| lin_ppl | word_perplexity ↓ | 10.00 | 8.76e+16 | 0% |"
    assert rows["lin_passkey_64"].endswith("| 10.0 |  |")  # a teacher score of 0: no recovery
    # (min(150, 100) + 50 + 0) / 3 = 50, over 3 of the 4 tasks; uncapped it would be 67%
    assert rows["**mean recovery**"].endswith("| **50%** (3 of 4 tasks) |")
    assert "cannot hide a loss on another" in table
    assert Headline("lin_ppl", "word_perplexity", 999999.0, higher_is_better=False).display() == "999999.00"
    assert Headline("lin_ppl", "word_perplexity", 1234567.0, higher_is_better=False).display() == "1.23e+06"


# --------------------------------------------------------------------------- the real harness


def test_eval_cli_runs_every_pack_task_and_writes_results_and_report(models, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        ["eval", str(models["student_dir"]), "--teacher", str(models["teacher_dir"]), "--tasks", "pack",
         "--limit", "2", "--batch-size", "2", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    student_label = models["student_dir"].name
    for label in ("teacher", student_label):
        raw = json.loads((out / "results" / f"{label}.json").read_text())
        for name, task in PACK_TASKS.items():
            task_results = raw["results"][name]
            value = task_results[f"{task.metric},{task.filter}"]
            assert raw["n-samples"][name]["effective"] == 2
            if task.higher_is_better:
                assert 0.0 <= value <= 1.0, (label, name, value)
            else:
                assert 1.0 < value < math.inf, (label, name, value)
        samples = [json.loads(line) for line in (out / "samples" / f"{label}.jsonl").read_text().splitlines()]
        generated = [s for s in samples if s["task"].startswith("lin_passkey")]
        assert len(generated) == 6 and all(isinstance(s["resps"][0][0], str) for s in generated)
    # the teacher and its (untrained) student differ, so the perplexities must too
    raw_t = json.loads((out / "results" / "teacher.json").read_text())["results"]["lin_ppl"]
    raw_s = json.loads((out / "results" / f"{student_label}.json").read_text())["results"]["lin_ppl"]
    assert raw_t["word_perplexity,none"] != pytest.approx(raw_s["word_perplexity,none"], rel=1e-3)

    report = (out / "report.md").read_text()
    assert report in result.output
    rows = [line for line in report.splitlines() if line.startswith("| lin_")]
    assert [r.split(" | ")[0][2:] for r in rows] == list(PACK_TASKS)
    assert f"| teacher | {student_label} | recovery |" in report.splitlines()[0]
    ppl_row = next(r for r in rows if r.startswith("| lin_ppl "))
    expected = 100 * raw_t["word_perplexity,none"] / raw_s["word_perplexity,none"]
    assert ppl_row.endswith(f"| {expected:.0f}% |")
    summary = json.loads((out / "summary.json").read_text())
    assert [m["label"] for m in summary["models"]] == ["teacher", student_label]


def test_left_padded_generate_until_matches_unpadded_runs(models, tokenizer):
    """lm-eval batches generation requests with left padding; a converted model must give every
    prompt the answer it gives alone (padding must not leak into the recurrent state)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    student = models["student"]
    text = passkey_docs(256, 1, seed=3)[0]["prompt"]
    # prompts of very different lengths, most longer than the 64-token window
    prompts = [text[-n:] for n in (90, 700, 260, 1000, 40, 520)]
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    assert max(lengths) > 4 * min(lengths) and max(lengths) > 200
    gen = {"until": ["\n\n\n"], "max_gen_toks": 10, "do_sample": False}

    def answers(batch_size):
        lm = HFLM(pretrained=student, tokenizer=tokenizer, batch_size=batch_size)
        reqs = [Instance("generate_until", {}, (p, dict(gen)), idx=0) for p in prompts]
        return lm.generate_until(reqs, disable_tqdm=True)

    batched, single = answers(6), answers(1)
    assert batched == single
    # and equal to plain greedy generate on the unpadded prompt
    for prompt, answer in zip(prompts[:2], single):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = student.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert tokenizer.decode(out[0, ids.shape[1] :]).startswith(answer)
    assert len(set(single)) > 1  # the outputs depend on the prompt: the comparison means something


def test_lm_eval_cli_on_saved_converted_model_matches_in_memory(models, tokenizer, pack, tmp_path):
    """The plain ``lm-eval run --model hf --model_args pretrained=DIR,trust_remote_code=True
    --include_path PACK`` on a checkpoint saved by ``save_model`` gives the in-memory numbers."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        str(Path(sys.executable).parent / "lm-eval"), "run", "--model", "hf",
        "--model_args", f"pretrained={models['student_dir']},trust_remote_code=True,dtype=float32",
        "--include_path", str(pack), "--tasks", "lin_cloze", "--limit", "2", "--batch_size", "1",
        "--output_path", str(tmp_path / "cli"),
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result_file,) = (tmp_path / "cli").rglob("results_*.json")
    cli = json.loads(result_file.read_text())["results"]["lin_cloze"]
    in_memory = evaluate_model(models["student"], tokenizer, ["lin_cloze"], pack, limit=2, batch_size=1)
    (head,) = headlines(in_memory, ["lin_cloze"])
    assert cli["acc,none"] == pytest.approx(head.value)
    assert cli["perplexity,none"] == pytest.approx(in_memory["results"]["lin_cloze"]["perplexity,none"], rel=1e-4)


EVAL_SCRIPT = r"""
import sys
from linearize.evaluation import run_eval

run_eval(sys.argv[2:], tasks="lin_ppl", out_dir=sys.argv[1], limit=2, batch_size=2, log=lambda *a: None)
"""


def test_eval_of_models_in_same_named_directories_in_a_fresh_process(models, tmp_path):
    """Two models in ``A/model`` and ``B/model`` get their own labels, columns and results files; outside
    any git repository, stderr has no ``fatal:`` from lm-eval's git call and no warnings about the pack's YAML."""
    import shutil

    work = tmp_path / "work"
    a, b = work / "A" / "model", work / "B" / "model"
    shutil.copytree(models["teacher_dir"], a)
    shutil.copytree(models["student_dir"], b)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "GIT_CEILING_DIRECTORIES": str(tmp_path)}  # git cannot find a repository above the working directory
    proc = subprocess.run(
        [sys.executable, "-c", EVAL_SCRIPT, str(work / "out"), str(a), str(b)],
        capture_output=True, text=True, env=env, timeout=300, cwd=work, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fatal:" not in proc.stderr, proc.stderr[-3000:]
    assert "is defined, but" not in proc.stderr, proc.stderr[-3000:]  # lm-eval's warnings about metric defaults
    summary = json.loads((work / "out" / "summary.json").read_text())
    labels = [m["label"] for m in summary["models"]]
    assert labels == ["A/model", "B/model"]
    values = {}
    for label, model in zip(labels, summary["models"]):
        raw = json.loads((work / "out" / "results" / f"{label.replace('/', '-')}.json").read_text())
        values[label] = raw["results"]["lin_ppl"]["word_perplexity,none"]
        assert model["headlines"][0]["value"] == pytest.approx(values[label])
    assert values["A/model"] != pytest.approx(values["B/model"], rel=1e-3)  # two models, two numbers
    report = (work / "out" / "report.md").read_text().splitlines()
    assert report[0] == "| task | metric | A/model | B/model |"
    a_text, b_text = format_number(values["A/model"]), format_number(values["B/model"])
    assert a_text != b_text and report[2] == f"| lin_ppl | word_perplexity ↓ | {a_text} | {b_text} |"
