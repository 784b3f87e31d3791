"""Teachers from anywhere: the offline default, a .gguf file, a local directory, a Hub id (cached, or
refused at once when it cannot come from anywhere), and what a loaded teacher is (its identity)."""

import hashlib
import shutil
import time

import huggingface_hub
import pytest
import torch

from linearize.errors import ModelFileError, ModelNotFoundError
from linearize.teachers import DEFAULT_TEACHER_ID, default_teacher_path, load_model, teacher_identity
from tiny_models import save_tiny_teacher, tiny_model

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused


def test_offline_default_is_trainable_fp32_with_its_tokenizer(smollm2):
    model = smollm2.model
    assert smollm2.name == DEFAULT_TEACHER_ID
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert getattr(model, "hf_quantizer", None) is None  # detached: trainable and saveable
    assert getattr(model.config, "quantization_config", None) is None
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ids = smollm2.tokenizer("The quick brown fox", return_tensors="pt").input_ids
    assert smollm2.tokenizer.decode(ids[0]) == "The quick brown fox"
    assert smollm2.tokenizer.pad_token is not None


def test_offline_default_is_saved_in_bf16_and_identified_by_its_gguf(smollm2):
    assert smollm2.dtype == torch.bfloat16  # trained dequantised in fp32, saved in bf16 by default
    assert smollm2.revision is None
    with open(default_teacher_path(), "rb") as f:
        expected = hashlib.file_digest(f, "sha256").hexdigest()
    assert teacher_identity(smollm2) == {"hub_id": DEFAULT_TEACHER_ID, "sha256": expected}


def test_gguf_file_path_loads_the_same_weights_and_is_named_by_its_file(smollm2):
    loaded = load_model(str(default_teacher_path()))
    assert torch.equal(loaded.model.model.embed_tokens.weight, smollm2.model.model.embed_tokens.weight)
    assert loaded.name == "SmolLM2-135M-Instruct.Q4_1.gguf"  # never a local absolute path
    assert loaded.source == str(default_teacher_path())
    assert loaded.dtype == torch.bfloat16
    assert teacher_identity(loaded) == {"name": loaded.name, "sha256": teacher_identity(smollm2)["sha256"]}


def test_local_directory_is_named_by_its_directory_and_keeps_its_dtype(tmp_path):
    teacher = save_tiny_teacher(tmp_path / "my-model", family="qwen3")
    loaded = load_model(str(teacher))
    assert type(loaded.model).__name__ == "Qwen3ForCausalLM" and not loaded.model.training
    assert loaded.name == "my-model" and loaded.source == str(teacher)
    assert loaded.dtype == torch.float32 and loaded.revision is None

    tiny_model("qwen3").to(torch.bfloat16).save_pretrained(teacher)
    assert load_model(str(teacher)).dtype == torch.bfloat16


def test_teacher_identity_is_a_content_hash_that_follows_the_weights(tmp_path):
    teacher = save_tiny_teacher(tmp_path / "t")
    loaded = load_model(str(teacher))
    first = teacher_identity(loaded)
    assert set(first) == {"name", "sha256"} and first["name"] == "t"
    assert teacher_identity(loaded) == first
    assert teacher_identity(load_model(str(shutil.copytree(teacher, tmp_path / "copy"))))["sha256"] == first["sha256"]
    tiny_model("llama", seed=1).save_pretrained(teacher)  # same shapes, other weights
    assert teacher_identity(loaded)["sha256"] != first["sha256"]


@pytest.mark.parametrize(
    "spec,message",
    [
        ("./missing-dir", "model path not found"),
        ("/tmp/missing.gguf", "model path not found: /tmp/missing.gguf"),
    ],
)
def test_clear_errors(spec, message):
    with pytest.raises(ModelNotFoundError, match=message):
        load_model(spec)


def test_directory_without_config_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="not a model directory"):
        load_model(str(tmp_path))


def test_corrupt_teacher_files_name_the_file(tmp_path):
    teacher = save_tiny_teacher(tmp_path / "t")
    (teacher / "model.safetensors").write_bytes(b"\x08" + bytes(99))
    with pytest.raises(ModelFileError, match=r"t/model\.safetensors: not a readable safetensors file"):
        load_model(str(teacher))
    (tmp_path / "x.gguf").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"x\.gguf: not a GGUF file \(bad magic b''"):
        load_model(str(tmp_path / "x.gguf"))


def test_hub_id_offline_and_not_cached_fails_at_once(tmp_path, monkeypatch):
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # tests/conftest.py sets HF_HUB_OFFLINE=1
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as err:
        load_model("no-such-org/no-such-model-xyz")
    assert time.perf_counter() - t0 < 5
    message = str(err.value)
    assert f"no local path {tmp_path}/no-such-org/no-such-model-xyz" in message
    assert "not in the Hugging Face cache" in message and "HF_HUB_OFFLINE is set" in message


def test_hub_id_with_the_hub_unreachable_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", UNREACHABLE)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match=rf"my-model.* the Hub \({UNREACHABLE}\) is unreachable"):
        load_model("my-model")
    assert time.perf_counter() - t0 < 5


def _hub_cache_with(tmp_path, repo_id: str):
    """A Hugging Face cache directory holding ``repo_id`` (a tiny teacher) at FAKE_COMMIT, as the Hub
    client lays it out."""
    cache = tmp_path / "hub"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    save_tiny_teacher(repo / "snapshots" / FAKE_COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FAKE_COMMIT)
    return cache


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "hub-unreachable"])
def test_a_cached_hub_model_loads_without_the_network(tmp_path, monkeypatch, offline):
    cache = _hub_cache_with(tmp_path, "some-org/tiny")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", UNREACHABLE)
    loaded = load_model("some-org/tiny")
    assert loaded.name == loaded.source == "some-org/tiny" and loaded.local_path is None
    assert loaded.revision == FAKE_COMMIT
    assert teacher_identity(loaded) == {"hub_id": "some-org/tiny", "revision": FAKE_COMMIT}
