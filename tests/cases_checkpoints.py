"""CLI error cases: see cli_cases.py. Saved checkpoints that are not what they claim (an unknown layer type,
no ``linearization`` block) and a checkpoint directory that links to a file outside it; each fails before
anything is written or sent."""

import json

from cli_cases import Case


def _converted_with(change):
    """A setup that saves a tiny converted checkpoint into ``TMP/bad`` and then edits its config with ``change``."""

    def setup(tmp):
        from tiny_models import save_word_tokenizer, tiny_model
        from transformers import AutoTokenizer

        from linearize import linearize_model
        from linearize.export import save_model
        from linearize.recipes import load_recipe

        model = linearize_model(tiny_model("llama"), load_recipe("liger-gla").attention.to_spec(), recipe="liger-gla")
        save_word_tokenizer(tmp / "tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(tmp / "tokenizer")
        path = save_model(model, tokenizer, tmp / "bad")
        config = json.loads((path / "config.json").read_text())
        change(config)
        (path / "config.json").write_text(json.dumps(config, indent=2))

    return setup


def _unknown_layer_type(config):
    config["linearization"]["layer_types"][1] = "linear_fast"


def _no_linearization(config):
    del config["linearization"]


def _link_to_outside_file(tmp):
    model = tmp / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}\n')
    (model / "model.safetensors").write_bytes(b"\0" * 16)
    (tmp / "secret.txt").write_text("not for the Hub\n")
    (model / "notes.txt").symlink_to(tmp / "secret.txt")


CHECKPOINT_CASES: list[Case] = [
    Case("checkpoint-unknown-layer-type",
         'a saved checkpoint whose config.json says layer_types[1] is "linear_fast"',
         ("eval", "{tmp}/bad", "--limit", "2"),
         "{tmp}/bad/config.json: linearization.layer_types[1] is 'linear_fast', not a known layer type "
         "(linear_hybrid, softmax)",
         setup=_converted_with(_unknown_layer_type)),
    Case("checkpoint-without-linearization",
         "a saved checkpoint (model_type linearized_llama) whose config.json has no linearization block",
         ("eval", "{tmp}/bad", "--limit", "2"),
         "{tmp}/bad/config.json: the converted model's config (model_type 'linearized_llama') has no "
         "'linearization' block",
         setup=_converted_with(_no_linearization)),
    Case("push-link-outside", "push of a directory holding a symbolic link to a file outside it",
         ("push", "{tmp}/model", "--repo", "me/x"),
         "refusing to publish symbolic links to files outside the directory (notes.txt -> {tmp}/secret.txt)",
         setup=_link_to_outside_file),
]
