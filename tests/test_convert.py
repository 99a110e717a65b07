"""The converter: safe loading of original checkpoints, exact key coverage, clear errors, upload, open_clip export."""

import argparse
import json
import os
from pathlib import Path

import open_clip
import pytest
import torch
from conftest import tiny_config
from reference import open_clip_model, original_checkpoint, save_numpy1_style
from test_layout import bundle_modules
from transformers import AutoModel

from modeling_unimedclip import UniMedCLIPModel, UniMedCLIPProcessor
from unimedclip.release import hub as hub_module
from unimedclip.release.convert import convert_checkpoint
from unimedclip.release.convert import main as convert_main
from unimedclip.release.export_open_clip import export_open_clip
from unimedclip.release.original_format import load_original_checkpoint

SHAPE = dict(image_size=32, patch_size=16)


@pytest.fixture(scope="module")
def reference(tiny_bert_dir):
    return open_clip_model(tiny_bert_dir, **SHAPE)


@pytest.fixture()
def checkpoint(reference):
    return original_checkpoint(reference)


def _convert(checkpoint: dict, tmp_path, text_encoder, **kwargs):
    path = tmp_path / "checkpoint.pt"
    torch.save(checkpoint, path)
    return convert_checkpoint(path, str(text_encoder), **kwargs)


def test_numpy1_legacy_checkpoint_loads_without_unsafe_pickle(checkpoint, tmp_path):
    save_numpy1_style(checkpoint, tmp_path / "legacy.pt")
    weights = load_original_checkpoint(tmp_path / "legacy.pt")
    assert "visual.conv1.weight" in weights and "text.proj.0.weight" in weights
    assert not any(key.startswith(("module.", "text_encoder.")) for key in weights)


def test_every_weight_is_converted(checkpoint, reference, tmp_path, tiny_bert_dir):
    model, processor = _convert(checkpoint, tmp_path, tiny_bert_dir)
    assert model.num_parameters() == sum(p.numel() for p in reference.parameters())
    torch.testing.assert_close(model.logit_scale, reference.logit_scale, atol=0, rtol=0)
    q, k, v = reference.visual.transformer.resblocks[1].attn.in_proj_weight.chunk(3)
    torch.testing.assert_close(model.vision_model.encoder.layers[1].self_attn.k_proj.weight, k, atol=0, rtol=0)
    assert processor.image_processor.crop_size["height"] == SHAPE["image_size"]
    assert processor.tokenizer.model_max_length == 256


def test_corrupt_file_is_a_clear_error(tmp_path, tiny_bert_dir):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ValueError, match="corrupt.pt is not a readable PyTorch checkpoint"):
        convert_checkpoint(path, str(tiny_bert_dir))


def test_truncated_file_is_a_clear_error(checkpoint, tmp_path, tiny_bert_dir):
    path = tmp_path / "truncated.pt"
    torch.save(checkpoint, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.pt is not a readable PyTorch checkpoint"):
        convert_checkpoint(path, str(tiny_bert_dir))


def test_missing_file_is_a_clear_error(tmp_path, tiny_bert_dir):
    with pytest.raises(FileNotFoundError, match="nowhere.pt does not exist"):
        convert_checkpoint(tmp_path / "nowhere.pt", str(tiny_bert_dir))


def test_checkpoint_of_another_architecture_is_refused(tmp_path, tiny_bert_dir):
    clip = open_clip.CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 32, "patch_size": 16, "width": 64, "layers": 1, "head_width": 64},
        text_cfg={"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    )
    with pytest.raises(
        ValueError, match=r"Not a UniMed-CLIP checkpoint.*missing text\.transformer\..*BERT text tower"
    ):
        _convert({"state_dict": clip.state_dict()}, tmp_path, tiny_bert_dir)


def test_missing_and_extra_keys_are_listed(checkpoint, tmp_path, tiny_bert_dir):
    del checkpoint["state_dict"]["module.visual.ln_post.weight"]
    checkpoint["state_dict"]["module.visual.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(ValueError) as error:
        _convert(checkpoint, tmp_path, tiny_bert_dir)
    assert "model weight missing from the checkpoint: vision_model.post_layernorm.weight" in str(error.value)
    assert "checkpoint weight with no place in the model: visual.extra_head.weight" in str(error.value)


def test_shape_mismatch_is_listed(checkpoint, tmp_path, tiny_bert_dir):
    checkpoint["state_dict"]["module.visual.ln_pre.bias"] = torch.zeros(7)
    with pytest.raises(ValueError, match=r"shape mismatch for vision_model\.pre_layrnorm\.bias: checkpoint \(7,\)"):
        _convert(checkpoint, tmp_path, tiny_bert_dir)


def test_text_encoder_that_does_not_match_is_refused(checkpoint, tmp_path, tiny_bert_dir):
    other = tmp_path / "other-bert"
    config = json.loads((tiny_bert_dir / "config.json").read_text())
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="num_hidden_layers 3 vs 2 in the checkpoint"):
        _convert(checkpoint, tmp_path, other)


def test_variant_mismatch_lists_the_differences(checkpoint, tmp_path, tiny_bert_dir):
    with pytest.raises(ValueError, match=r"not the 'b16' variant: vision image_size 32 \(expected 224\)"):
        _convert(checkpoint, tmp_path, tiny_bert_dir, variant="b16")


class Payload:
    """What a hostile checkpoint carries: unpickling it runs a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_arbitrary_pickles_need_unsafe_pickle(checkpoint, tmp_path, tiny_bert_dir):
    hostile = {**checkpoint, "args": Payload(tmp_path / "ran")}
    with pytest.raises(ValueError, match=r"pickles `posix\.system`, which the safe loader refuses.*--unsafe-pickle"):
        _convert(hostile, tmp_path, tiny_bert_dir)
    assert not (tmp_path / "ran").exists()
    checkpoint["args"] = argparse.Namespace(lr=5e-4)
    with pytest.raises(ValueError, match=r"pickles `argparse\.Namespace`, which the safe loader refuses") as refused:
        _convert(checkpoint, tmp_path, tiny_bert_dir)
    assert "corrupt" not in str(refused.value) and "weights_only" not in str(refused.value)
    model, _ = _convert(checkpoint, tmp_path, tiny_bert_dir, unsafe_pickle=True)
    assert isinstance(model, UniMedCLIPModel)


class FakeHfApi:
    """Records Hub calls instead of making them."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(
            ("upload_folder", kwargs["repo_id"], sorted(p.name for p in kwargs["folder_path"].iterdir()))
        )
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/0123"


def test_cli_converts_and_pushes_to_the_hub(checkpoint, tmp_path, tiny_bert_dir, monkeypatch, capsys):
    api = FakeHfApi()
    monkeypatch.setattr(hub_module, "HfApi", lambda: api)
    torch.save(checkpoint, tmp_path / "epoch_10.pt")
    output = tmp_path / "converted"
    convert_main(
        [
            "--checkpoint",
            str(tmp_path / "epoch_10.pt"),
            "--text-encoder",
            str(tiny_bert_dir),
            "--output",
            str(output),
            "--push-to-hub",
            "org/unimed-clip-tiny",
        ]
    )
    files = {p.name for p in output.iterdir()}
    assert {"model.safetensors", "config.json", "processor_config.json", "tokenizer_config.json"} <= files
    assert {name for name in files if name.endswith(".py")} == bundle_modules()  # the remote code, all of it, only it
    assert not any(name.endswith((".bin", ".pt")) for name in files)
    assert "license: cc-by-nc-4.0" in (output / "README.md").read_text()  # our card, not transformers' generic one
    assert api.calls[0] == (
        "create_repo",
        "org/unimed-clip-tiny",
        {"repo_type": "model", "private": None, "exist_ok": True},
    )
    assert api.calls[1] == ("upload_folder", "org/unimed-clip-tiny", sorted(files))
    assert "commit/0123" in capsys.readouterr().out


def test_open_clip_export_round_trips(checkpoint, reference, tmp_path, tiny_bert_dir):
    model, processor = _convert(checkpoint, tmp_path, tiny_bert_dir)
    model.save_pretrained(tmp_path / "hf")
    processor.save_pretrained(tmp_path / "hf")
    export_open_clip(tmp_path / "hf", tmp_path / "open_clip", str(tiny_bert_dir))

    reloaded, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{tmp_path / 'open_clip'}", pretrained_text=False
    )
    reloaded.eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    tokens = processor.tokenizer(["chest x-ray"], padding="max_length", max_length=256, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode_image(pixel_values), reference.encode_image(pixel_values))
        torch.testing.assert_close(reloaded.encode_text(tokens), reference.encode_text(tokens))
    assert reloaded.logit_scale.item() == pytest.approx(reference.logit_scale.item())
    assert preprocess.transforms[0].size == 32


def test_converting_into_a_folder_with_an_earlier_model(checkpoint, tmp_path, tiny_bert_dir, monkeypatch):
    """Before: the old shards were deleted, then the conversion crashed midway, leaving a stale index."""
    torch.save(checkpoint, tmp_path / "epoch_10.pt")
    output = tmp_path / "converted"
    arguments = ["--checkpoint", str(tmp_path / "epoch_10.pt"), "--text-encoder", str(tiny_bert_dir)]
    UniMedCLIPModel(tiny_config()).save_pretrained(output, max_shard_size="50KB")  # an earlier, sharded model
    earlier = {path.name: path.read_bytes() for path in output.iterdir()}
    assert "model.safetensors.index.json" in earlier
    with pytest.raises(SystemExit):
        convert_main([*arguments, "--output", str(output)])
    assert {path.name: path.read_bytes() for path in output.iterdir()} == earlier

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(UniMedCLIPProcessor, "save_pretrained", crash)
    with pytest.raises(SystemExit, match="convert: error: .*No space left on device"):
        convert_main([*arguments, "--output", str(output), "--overwrite"])
    assert {path.name: path.read_bytes() for path in output.iterdir()} == earlier  # untouched by the failed write
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []
    monkeypatch.undo()
    convert_main([*arguments, "--output", str(output), "--overwrite"])
    files = {path.name for path in output.iterdir()}
    assert "model.safetensors" in files and not any(name.startswith("model-0") for name in files)
    assert "model.safetensors.index.json" not in files
    assert isinstance(AutoModel.from_pretrained(output), UniMedCLIPModel)


def test_cli_errors_are_messages_not_tracebacks(tmp_path, tiny_bert_dir):
    arguments = ["--text-encoder", str(tiny_bert_dir), "--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="convert: error: Checkpoint .*missing.pt does not exist"):
        convert_main(["--checkpoint", str(tmp_path / "missing.pt"), *arguments])
