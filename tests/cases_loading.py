"""CLI error cases: see cli_cases.py. Bad teachers (weights, config, GGUF, a model that is nowhere)
and bad training data; each fails before anything is written."""

import json
import os

from cli_cases import Case
from tiny_models import save_tiny_teacher, word_text


def _teacher_with(change):
    """A setup that saves a tiny teacher into ``TMP/bad`` and then applies ``change(directory)``."""

    def setup(tmp):
        change(save_tiny_teacher(tmp / "bad"))

    return setup


def _garbage_weights(directory):
    (directory / "model.safetensors").write_bytes(os.urandom(100))


def _truncated_weights(directory):
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])


def _unknown_model_type(directory):
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "model_type": "no_such_arch"}))


def _config_not_json(directory):
    (directory / "config.json").write_text('{"model_type": "llama",\n  hidden_size: 96}\n')


def _gguf_of_unknown_architecture(tmp):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(tmp / "x.gguf"), "no_such_arch")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write(name, text):
    def setup(tmp):
        (tmp / name).write_text(text)

    return setup


_BAD_JSONL = '{"text": "w1 w2 w3"}\n\n{"text": "w4 w5"}\n{"text": "w6 w7",}\n{"text": "w8"}\n'
_CONVERT = ("convert", "{tmp}/bad", "--out", "{tmp}/o")
_RUN = ("run", "{teacher}", "--budget", "demo", "--tokens", "1024", "--out", "{tmp}/o", "--data")

LOADING_CASES: list[Case] = [
    Case("garbage-safetensors", "a teacher whose model.safetensors is 100 random bytes", _CONVERT,
         "{tmp}/bad/model.safetensors: not a readable safetensors file (truncated or corrupt",
         setup=_teacher_with(_garbage_weights)),
    Case("truncated-safetensors", "a teacher whose model.safetensors is cut in half", _CONVERT,
         "{tmp}/bad/model.safetensors: not a readable safetensors file (truncated or corrupt",
         setup=_teacher_with(_truncated_weights)),
    Case("unknown-model-type", 'a teacher whose config.json says "model_type": "no_such_arch"', _CONVERT,
         "{tmp}/bad/config.json: model_type 'no_such_arch' is not known to transformers",
         setup=_teacher_with(_unknown_model_type)),
    Case("config-not-json", "a teacher whose config.json is not JSON", _CONVERT,
         "{tmp}/bad/config.json: not valid JSON (Expecting property name enclosed in double quotes at line 2",
         setup=_teacher_with(_config_not_json)),
    Case("not-gguf", "a text file named x.gguf", ("convert", "{tmp}/x.gguf", "--out", "{tmp}/o"),
         "{tmp}/x.gguf: not a GGUF file (bad magic", setup=_write("x.gguf", "not a model\n")),
    Case("gguf-unknown-architecture", "a GGUF file of an architecture transformers cannot load",
         ("convert", "{tmp}/x.gguf", "--out", "{tmp}/o"),
         "{tmp}/x.gguf: transformers cannot load this model: GGUF model with architecture no_such_arch",
         setup=_gguf_of_unknown_architecture),
    Case("model-nowhere-offline", "a model that is neither a local path nor in the Hub cache, HF_HUB_OFFLINE set",
         ("convert", "my-model", "--out", "{tmp}/o"),
         "model 'my-model' not found: no local path {tmp}/my-model, and not in the Hugging Face cache"),
    Case("malformed-jsonl", "--data: a JSONL file whose line 4 is not JSON", (*_RUN, "{tmp}/bad.jsonl"),
         "{tmp}/bad.jsonl: line 4 is not valid JSON: Expecting property name enclosed in double quotes",
         setup=_write("bad.jsonl", _BAD_JSONL)),
    Case("jsonl-line-not-object", "--data: a JSONL file whose line 2 is a JSON list", (*_RUN, "{tmp}/rows.jsonl"),
         "{tmp}/rows.jsonl: line 2 is a JSON list, not an object",
         setup=_write("rows.jsonl", '{"text": "w1 w2"}\n["w3", "w4"]\n')),
    Case("single-paragraph-txt", "--data: a .txt file with one paragraph (no blank line)", (*_RUN, "{tmp}/one.txt"),
         "{tmp}/one.txt: need at least 2 examples to split off a validation set, found 1; "
         "a .txt file is split into examples at blank lines",
         setup=_write("one.txt", word_text(400, paragraph_every=10_000))),
    Case("teacher-already-converted", "an already converted model given as the teacher",
         ("convert", "{converted}", "--out", "{tmp}/o"),
         "LinearizedLlamaForCausalLM is already linearized (recipe 'liger-gla'): give the teacher it was converted from"),
    Case("run-teacher-already-converted", "an already converted model given as the teacher of a run",
         ("{converted}", "--tokens", "1024", "--out", "{tmp}/o"),
         "LinearizedLlamaForCausalLM is already linearized (recipe 'liger-gla')"),
]
