"""Teachers from anywhere: the offline default, a .gguf file, a local directory, a Hub id."""

import pytest
import torch

from linearize.errors import ModelNotFoundError
from linearize.teachers import DEFAULT_TEACHER_ID, default_teacher_path, load_model
from tiny_models import tiny_model


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


def test_gguf_file_path_loads_the_same_weights(smollm2):
    loaded = load_model(str(default_teacher_path()))
    assert torch.equal(loaded.model.model.embed_tokens.weight, smollm2.model.model.embed_tokens.weight)
    assert loaded.name == str(default_teacher_path())


def test_local_directory(tmp_path):
    from test_recipes_and_cli import _tokenizer_dir

    tiny_model("qwen3").save_pretrained(tmp_path)
    _tokenizer_dir(tmp_path)
    loaded = load_model(str(tmp_path))
    assert type(loaded.model).__name__ == "Qwen3ForCausalLM" and not loaded.model.training


@pytest.mark.parametrize(
    "spec,message",
    [
        ("./missing-dir", "model path not found"),
        ("/tmp/missing.gguf", "model path not found: /tmp/missing.gguf"),
        ("no-such-org/no-such-model-xyz", "could not load model 'no-such-org/no-such-model-xyz'"),
    ],
)
def test_clear_errors(spec, message):
    with pytest.raises(ModelNotFoundError, match=message):
        load_model(spec)


def test_directory_without_config_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="not a model directory"):
        load_model(str(tmp_path))
