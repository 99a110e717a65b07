"""train.py and unimedclip.training: recipe, configuration, checkpoints, resume, failures, final model."""

import contextlib
import functools
import importlib.util
import io
import itertools
import json
import math
import os
import pickle
import shutil
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate.state import AcceleratorState
from conftest import tiny_config
from datasets import DatasetInfo, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard, DatasetCardData
from PIL import Image
from safetensors.torch import load_file, save_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModel, pipeline

from modeling_unimedclip import UniMedCLIPImageProcessor, UniMedCLIPModel, UniMedCLIPProcessor
from unimedclip.data import EmptyEpochError, UniMedCollator, load_unimed, normalize_pixels, unimed_dataloader
from unimedclip.data.records import make_record
from unimedclip.data.sources import get_source
from unimedclip.training import checkpointing, loss
from unimedclip.training.checkpointing import CheckpointWriteError
from unimedclip.training.config import PRESETS, ConfigurationError, TrainingConfig, build_config, parse_args
from unimedclip.training.optim import build_scheduler, lr_factor, parameter_groups
from unimedclip.training.uploads import BackgroundPusher
from unimedclip.training.zero_shot_hook import ZeroShotHook

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
train_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_script)

# A learnable set: each caption has its own colour. Two modality configs of two shards each.
CLASSES = {
    "chest x ray showing pneumonia": ("xray", "openi", (220, 40, 40)),
    "normal chest x ray": ("xray", "openi", (40, 220, 40)),
    "ct of the liver with a mass": ("mixed", "rocov2", (40, 40, 220)),
    "mri of the brain showing a tumor": ("mixed", "rocov2", (220, 220, 40)),
}


def write_unimed_repo(
    root: Path, per_class: int = 16, shards: int = 2, image_bytes: bytes | None = None, corrupt_every: int = 0
) -> Path:
    """A UniMed-layout directory (contract: data/<modality>/*.tar of `<key>.image` + `<key>.json`, card configs).
    `image_bytes` replaces every image, `corrupt_every` every n-th one, by undecodable bytes."""
    rng = np.random.default_rng(0)
    by_modality: dict[str, list] = {}
    for caption, (modality, source, colour) in CLASSES.items():
        for _ in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            if image_bytes is not None or (corrupt_every and len(by_modality.get(modality, [])) % corrupt_every == 0):
                buffer = io.BytesIO(image_bytes or b"not an image")
            fields = dict(modality=modality, captions=[caption], report=None, labels=[], path="", resized_from=None)
            record = make_record(get_source(source), **fields)
            by_modality.setdefault(modality, []).append((buffer.getvalue(), json.dumps(record).encode()))
    for modality, samples in by_modality.items():
        folder = root / "data" / modality
        folder.mkdir(parents=True)
        order = rng.permutation(len(samples))
        for shard in range(shards):
            with tarfile.open(folder / f"{modality}-{shard}.tar", "w") as tar:
                for index in order[shard::shards]:
                    for suffix, data in zip(("image", "json"), samples[index]):
                        member = tarfile.TarInfo(f"{modality}-{index:05d}.{suffix}")
                        member.size = len(data)
                        tar.addfile(member, io.BytesIO(data))
    card = DatasetCardData(
        configs=[
            {"config_name": modality, "data_files": [{"split": "train", "path": f"data/{modality}/*.tar"}]}
            for modality in by_modality
        ]
    )
    infos = {
        modality: DatasetInfo(
            config_name=modality, splits=SplitDict({"train": SplitInfo(name="train", num_examples=len(samples))})
        )
        for modality, samples in by_modality.items()
    }
    DatasetInfosDict(infos).to_dataset_card_data(card)
    DatasetCard(f"---\n{card.to_yaml()}\n---\n").save(root / "README.md")
    return root


@pytest.fixture(scope="module")
def unimed_repo(tmp_path_factory) -> Path:
    return write_unimed_repo(tmp_path_factory.mktemp("unimed"))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def demo_config(data: Path, tokenizer: Path, output_dir: Path, **overrides):
    """The demo preset shrunk to seconds: 32 px, batch 8 (8 steps per pass over the 64 pairs)."""
    values = dict(
        data=str(data),
        tokenizer=str(tokenizer),
        output_dir=str(output_dir),
        image_size=32,
        batch_size=8,
        micro_batch_size=8,
        max_steps=10,
        warmup_steps=2,
        checkpoint_every=3,
        log_every=1,
    )
    return build_config("demo", {**values, **overrides})


def scalars(output_dir: Path, tag: str) -> list[float]:
    events = EventAccumulator(str(next((output_dir / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    return [event.value for event in events.Scalars(tag)]


# Recipe


def test_learning_rate_schedule_is_the_original_formula():
    config = build_config("b16")
    assert (config.warmup_steps, config.total_steps) == (2000, 10 * math.ceil(5_282_000 / 2048)) == (2000, 25_800)
    assert lr_factor(0, 2000, 25_800) == 1 / 2000
    assert lr_factor(999, 2000, 25_800) == 0.5
    assert lr_factor(1999, 2000, 25_800) == 1.0
    assert lr_factor(2000, 2000, 25_800) == 1.0
    assert lr_factor(2000 + 11_900, 2000, 25_800) == pytest.approx(0.5)
    assert lr_factor(25_799, 2000, 25_800) == pytest.approx(0.5 * (1 + math.cos(math.pi * 23_799 / 23_800)))

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = build_scheduler(optimizer, config)
    seen = []
    for _ in range(2002):
        seen.append(optimizer.param_groups[0]["lr"])  # the lr optimizer step k runs at
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(5e-4 / 2000) and seen[1999] == seen[2000] == pytest.approx(5e-4)
    assert seen[2001] == pytest.approx(5e-4 * 0.5 * (1 + math.cos(math.pi / 23_800)))


def test_weight_decay_groups_follow_the_original_rules():
    model = UniMedCLIPModel(tiny_config())
    decayed_group, other_group = parameter_groups(model, 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decayed_group["params"]}
    not_decayed = {names[id(p)] for p in other_group["params"]}
    assert (decayed_group["weight_decay"], other_group["weight_decay"]) == (0.2, 0.0)
    assert decayed | not_decayed == set(names.values()) and not decayed & not_decayed
    for name in (
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.embeddings.position_embedding.weight",
        "vision_model.encoder.layers.0.self_attn.q_proj.weight",
        "vision_model.encoder.layers.0.mlp.fc1.weight",
        "visual_projection.weight",
        "text_model.embeddings.word_embeddings.weight",
        "text_model.embeddings.position_embeddings.weight",
        "text_model.embeddings.token_type_embeddings.weight",
        "text_model.encoder.layer.0.attention.self.query.weight",
        "text_projection.fc1.weight",
        "text_projection.fc2.weight",
    ):
        assert name in decayed
    for name in (
        "logit_scale",
        "vision_model.embeddings.class_embedding",
        "vision_model.pre_layrnorm.weight",
        "vision_model.post_layernorm.weight",
        "vision_model.encoder.layers.0.layer_norm1.weight",
        "vision_model.encoder.layers.0.self_attn.q_proj.bias",
        "text_model.embeddings.LayerNorm.weight",
        "text_model.encoder.layer.0.output.LayerNorm.bias",
        "text_model.encoder.layer.0.attention.self.query.bias",
    ):
        assert name in not_decayed
    assert all("LayerNorm" not in n and "layer_norm" not in n and not n.endswith("bias") for n in decayed)


def test_presets_match_the_recipe():
    b16, base, large = build_config("b16"), build_config("l14-336-base"), build_config("l14-336-large")
    for config in (b16, base, large):
        assert (config.beta1, config.beta2, config.eps, config.weight_decay) == (0.9, 0.98, 1e-6, 0.2)
        assert (config.batch_size, config.samples_per_epoch, config.epochs, config.warmup_steps) == (
            2048,
            5_282_000,
            10,
            2000,
        )
        assert config.init == "vision-text" and config.mixed_precision is None  # accelerate's launch or config
    assert b16.lr == 5e-4 and base.lr == large.lr == 4e-4
    assert base.image_size == large.image_size == 336 and b16.image_size == 224
    assert "base" in base.text and "large" in large.text and "b16" in b16.vision and "l14" in base.vision
    assert b16.accumulation_steps(16) == 1 and b16.accumulation_steps(4) == 4


def test_yaml_files_and_command_line_override_presets(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("preset: l14-336-base\nlr: 3e-4\nmodalities: [xray, ct]\n")
    config, print_config = parse_args(["--config", str(file), "--warmup-steps", "10", "--lock-image"])
    assert (config.lr, config.warmup_steps, config.lock_image, config.modalities) == (3e-4, 10, True, ["xray", "ct"])
    assert config.image_size == 336 and not print_config
    assert build_config(str(file), {"lr": 1e-4}).lr == 1e-4


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"batch_size": 100, "micro_batch_size": 64}, "not a multiple of micro_batch_size"),
        ({"warmup_steps": 30_000}, "must be smaller than the total steps"),
        ({"mixed_precision": "fp4"}, "mixed_precision must be one of"),
        ({"report_to": ["tensorboard", "tensorbored"]}, "report_to takes trackers of"),
        ({"report_to": ["none", "wandb"]}, "report_to 'none' excludes other trackers"),
        ({"lr": 1e-4, "learning_rate": 2e-4}, "learning_rate and lr are the same option"),
        ({"beta2": 1.0}, "beta2 must be in [0, 1)"),
        ({"vision": None}, "give both or neither"),
        ({"vision": None, "text": None}, "needs a tokenizer directory"),
        ({"modalities": ["xray", "dental"]}, "unknown modalities ['dental']"),
        ({"eval_every": 5}, "eval_every needs eval_data"),
        ({"epochs": "ten"}, "epochs must be int"),
        ({"keep_checkpoints": 0}, "keep_checkpoints must be at least 1"),
        ({"lr_warmup": 3}, "Unknown training option(s) ['lr_warmup']"),
    ],
)
def test_invalid_values_are_clear_errors(overrides, message):
    with pytest.raises(ConfigurationError) as error:
        build_config("b16", overrides)
    assert message in str(error.value)


def test_command_line_takes_both_spellings_and_trainer_names():
    config, _ = parse_args(
        ["--config", "b16", "--micro_batch_size", "64", "--warmup-steps", "10", "--learning_rate", "3e-4",
         "--save_steps", "500", "--save_total_limit", "2", "--hub_model_id", "me/run", "--logging_steps", "5",
         "--report_to", "tensorboard", "wandb", "--gradient_checkpointing", "--num_train_epochs", "2"]
    )  # fmt: skip
    assert (config.micro_batch_size, config.warmup_steps, config.lr) == (64, 10, 3e-4)
    assert (config.checkpoint_every, config.keep_checkpoints, config.push_to_hub) == (500, 2, "me/run")
    assert (config.log_every, config.report_to, config.activation_checkpointing) == (5, ["tensorboard", "wandb"], True)
    assert config.epochs == 2 and config.trackers == ["tensorboard", "wandb"]
    assert parse_args(["--report-to", "none"])[0].trackers is None
    assert (
        build_config("b16", {"resume_from_checkpoint": "latest", "per_device_train_batch_size": 32}).resume == "latest"
    )


def test_precision_comes_from_accelerate_unless_given(tmp_path, unimed_repo, tokenizer_dir, monkeypatch):
    """`accelerate launch --mixed_precision bf16` (or `accelerate config`) reaches train.py through the environment."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    final = train_script.train(
        demo_config(unimed_repo, tokenizer_dir, tmp_path / "launched", max_steps=2, warmup_steps=1)
    )
    assert "| precision | bf16 |" in (final / "README.md").read_text()
    AcceleratorState._reset_state(reset_partial_state=True)
    config = demo_config(
        unimed_repo, tokenizer_dir, tmp_path / "explicit", max_steps=2, warmup_steps=1, mixed_precision="no"
    )
    assert "| precision | no |" in (train_script.train(config) / "README.md").read_text()


def test_invalid_values_fail_before_anything_starts(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--config", "b16", "--lr", "0"])
    assert "lr must be a positive number" in capsys.readouterr().err
    with pytest.raises(ConfigurationError, match="must be a multiple of micro_batch_size x processes"):
        build_config("b16", {"batch_size": 2048, "micro_batch_size": 128}).accumulation_steps(3)
    with pytest.raises(ConfigurationError, match="needs --data"):
        train_script.train(build_config("b16", {"output_dir": str(tmp_path)}))


def test_launch_that_accelerate_does_not_join_is_refused(tmp_path, unimed_repo, tokenizer_dir, monkeypatch):
    """torchrun on CPUs without ACCELERATE_USE_CPU=1 starts processes that Accelerate treats as separate runs."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigurationError, match="Launched as 2 processes but Accelerate runs 1"):
        train_script.train(demo_config(unimed_repo, tokenizer_dir, tmp_path / "run", max_steps=3))
    assert not (tmp_path / "run" / "checkpoints").exists()


# Training runs


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, unimed_repo, tokenizer_dir) -> Path:
    """One uninterrupted run of 10 steps over 1.25 passes of the data, checkpoints every 3 steps."""
    output_dir = tmp_path_factory.mktemp("run")
    final = train_script.train(demo_config(unimed_repo, tokenizer_dir, output_dir, max_steps=10))
    AcceleratorState._reset_state(reset_partial_state=True)
    return final


def test_run_writes_final_model_checkpoints_and_logs(finished_run):
    output_dir = finished_run.parent
    assert [p.name for p in checkpointing.list_checkpoints(output_dir)] == ["step-00000009", "step-00000010"]
    assert not list((output_dir / "checkpoints").glob(".tmp-*"))
    assert (finished_run / "README.md").is_file() and (output_dir / "config.yaml").is_file()
    assert len(scalars(output_dir, "train/loss")) == 10
    assert scalars(output_dir, "train/lr")[0] == pytest.approx(1e-3 * 0.5)  # logged after step 1: lr of step 2
    assert all(0 < scale <= 100 for scale in scalars(output_dir, "train/logit_scale"))
    assert scalars(output_dir, "perf/samples_per_s")[-1] > 0


def test_final_directory_loads_with_automodel_and_the_zero_shot_pipeline(finished_run):
    model = AutoModel.from_pretrained(finished_run)
    exported = load_file(finished_run.parent / "checkpoints" / "step-00000010" / "model" / "model.safetensors")
    assert all(torch.equal(exported[name], value) for name, value in model.state_dict().items())
    classifier = pipeline("zero-shot-image-classification", model=str(finished_run))
    image = Image.fromarray(np.full((40, 40, 3), (220, 40, 40), dtype=np.uint8))
    scores = classifier(image, candidate_labels=["pneumonia", "normal chest"])
    assert sum(score["score"] for score in scores) == pytest.approx(1.0, abs=1e-5)


def test_infonce_equals_open_clips_clip_loss_in_value_and_gradient():
    """The independent reference: open_clip's ClipLoss on the same normalised embeddings and scale."""
    from open_clip.loss import ClipLoss

    generator = torch.Generator().manual_seed(0)
    embeddings = [torch.randn(6, 8, generator=generator) for _ in range(2)]
    scale = torch.tensor(14.3)
    results = []
    for loss_fn in (loss.create_loss("infonce"), ClipLoss()):
        image, text = (F.normalize(e, dim=-1).requires_grad_() for e in embeddings)
        value = loss_fn(image, text, scale)
        value.backward()
        results.append((value.detach(), image.grad, text.grad))
    (ours, *our_grads), (reference, *reference_grads) = results
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6) and ours.item() > 0.5
    for mine, theirs in zip(our_grads, reference_grads, strict=True):
        torch.testing.assert_close(mine, theirs)


def test_loss_falls_on_a_learnable_set(tmp_path, unimed_repo, tokenizer_dir):
    config = demo_config(
        unimed_repo, tokenizer_dir, tmp_path, max_steps=40, lr=3e-4, warmup_steps=3, checkpoint_every=40
    )
    train_script.train(config)
    losses = scalars(tmp_path, "train/loss")
    # ln 8 = 2.08 is chance for 8 pairs; 4 captions repeat, so the floor is about ln 2.
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]) and np.mean(losses[-5:]) < 1.95, losses


def test_gradient_accumulation_averages_micro_batch_gradients(
    tmp_path, monkeypatch, unimed_repo, tokenizer_dir, tiny_tokenizer
):
    """batch 8 = 4 pairs x 1 process x 2 micro-steps: the step's gradient is the mean of two 4-pair contrastive
    losses' gradients (negatives do not span micro-batches), recomputed here from the same start weights and the
    loader's first two batches; then one AdamW step of the recipe. Adam's first update is ~lr x sign(gradient),
    blind to the gradient's scale (a sum instead of a mean), so the gradient the optimizer receives is recorded."""
    start = tmp_path / "start"
    model_config = tiny_config()  # no dropout anywhere, so that the step is deterministic
    model_config.text_config.hidden_dropout_prob = model_config.text_config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    UniMedCLIPModel(model_config).save_pretrained(start)
    processor = UniMedCLIPProcessor(image_processor=UniMedCLIPImageProcessor(size=32), tokenizer=tiny_tokenizer)
    processor.save_pretrained(start)

    received: list[dict[str, torch.Tensor]] = []
    build_optimizer = train_script.build_optimizer

    def recording_optimizer(
        model: torch.nn.Module, config: TrainingConfig, device: torch.device
    ) -> torch.optim.Optimizer:
        optimizer = build_optimizer(model, config, device)
        names = {parameter: name.removeprefix("model.") for name, parameter in model.named_parameters()}
        optimizer.register_step_pre_hook(
            lambda *_: received.append({names[p]: p.grad.clone() for p in names if p.grad is not None})
        )
        return optimizer

    monkeypatch.setattr(train_script, "build_optimizer", recording_optimizer)
    config = demo_config(
        unimed_repo,
        tokenizer_dir,
        tmp_path / "run",
        pretrained=str(start),
        batch_size=8,
        micro_batch_size=4,
        max_steps=1,
        warmup_steps=0,  # step 0 runs at the full lr
    )
    final = train_script.train(config)

    model = UniMedCLIPModel.from_pretrained(start).train()
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std

    def gradients(batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad()
        outputs = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=normalize_pixels(batch["pixel_values"], mean, std),
            return_loss=True,
        )
        outputs.loss.backward()
        return outputs.loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}

    def first_batches(batch_size: int, count: int) -> list[dict[str, torch.Tensor]]:
        dataset = load_unimed(str(unimed_repo), seed=config.seed, image_size=32)
        return list(itertools.islice(unimed_dataloader(dataset, batch_size, 0, UniMedCollator(tiny_tokenizer)), count))

    (loss_1, gradients_1), (loss_2, gradients_2) = (gradients(batch) for batch in first_batches(4, 2))
    expected = {name: (gradients_1[name] + gradients_2[name]) / 2 for name in gradients_1}
    assert len(received) == 1 and received[0].keys() == expected.keys()
    for name, gradient in expected.items():
        torch.testing.assert_close(received[0][name], gradient, rtol=1e-5, atol=1e-6, msg=name)
    assert scalars(tmp_path / "run", "train/loss") == [pytest.approx((loss_1 + loss_2) / 2, abs=1e-6)]
    # The test can tell: 8 pairs as one contrastive batch (negatives across micro-batches) give other gradients.
    _, spanning = gradients(first_batches(8, 1)[0])
    assert max((spanning[name] - gradient).abs().max().item() for name, gradient in expected.items()) > 1e-3

    # The optimizer step from the received gradient: from the mean, Adam's ~g / (|g| + eps) would turn the rounding
    # of near-zero gradients (about 1e-7) into weight differences of 1e-5.
    for name, parameter in model.named_parameters():
        parameter.grad = received[0][name]
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay), lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps
    )
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    trained = load_file(final / "model.safetensors")
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(trained[name], parameter.detach(), rtol=0, atol=1e-7, msg=name)


class Killed(BaseException):
    """Like a SIGKILL: nothing in train.py handles it."""


@pytest.mark.parametrize(
    ("killed_in", "resumed_from"),
    [(8, "step-00000006"), (10, "step-00000009")],
    ids=["inside-epoch-0", "across-the-epoch-boundary"],  # 8 steps per pass: step 9 is the first of epoch 1
)
def test_killed_and_resumed_run_ends_bit_identical(
    tmp_path, monkeypatch, finished_run, unimed_repo, tokenizer_dir, killed_in, resumed_from
):
    config = demo_config(unimed_repo, tokenizer_dir, tmp_path, max_steps=10)
    forward, calls = loss.ContrastiveTrainingModel.forward, []

    def dies(self, *args):
        calls.append(1)
        if len(calls) == killed_in:
            raise Killed
        return forward(self, *args)

    monkeypatch.setattr(loss.ContrastiveTrainingModel, "forward", dies)
    with pytest.raises(Killed):
        train_script.train(config)
    assert checkpointing.list_checkpoints(tmp_path)[-1].name == resumed_from
    monkeypatch.setattr(loss.ContrastiveTrainingModel, "forward", forward)
    AcceleratorState._reset_state(reset_partial_state=True)
    resumed = train_script.train(demo_config(unimed_repo, tokenizer_dir, tmp_path, max_steps=10, resume="latest"))

    expected, actual = load_file(finished_run / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    uninterrupted = finished_run.parent / "checkpoints" / "step-00000010"
    optimizer_state = torch.load(uninterrupted / "optimizer.bin", weights_only=False)["state"]
    resumed_state = torch.load(tmp_path / "checkpoints" / "step-00000010" / "optimizer.bin", weights_only=False)[
        "state"
    ]
    assert all(torch.equal(optimizer_state[k]["exp_avg"], resumed_state[k]["exp_avg"]) for k in optimizer_state)


def test_logit_scale_is_clamped_at_ln_100(tmp_path, monkeypatch, finished_run, unimed_repo, tokenizer_dir):
    """A temperature just below the bound and a loss that wants it higher: it stays at ln 100."""

    class WantsAHigherTemperature(loss.InfoNCELoss):
        def forward(self, image_embeds, text_embeds, logit_scale):
            return super().forward(image_embeds, text_embeds, logit_scale) - logit_scale

    monkeypatch.setitem(loss.LOSSES, "hotter", WantsAHigherTemperature)
    start = shutil.copytree(finished_run, tmp_path / "start")
    weights = load_file(start / "model.safetensors")
    weights["logit_scale"] = torch.tensor(math.log(100) - 1e-4)
    save_file(weights, start / "model.safetensors", metadata={"format": "pt"})
    config = demo_config(
        unimed_repo, tokenizer_dir, tmp_path / "run", pretrained=str(start), max_steps=3, loss="hotter"
    )
    final = train_script.train(config)
    assert load_file(final / "model.safetensors")["logit_scale"].item() == pytest.approx(math.log(100), abs=1e-7)
    assert scalars(tmp_path / "run", "train/logit_scale")[-1] == pytest.approx(100.0, rel=1e-6)


def test_resume_refuses_a_changed_recipe(tmp_path, finished_run, unimed_repo, tokenizer_dir):
    config = demo_config(unimed_repo, tokenizer_dir, finished_run.parent, lr=5e-3, resume="latest")
    with pytest.raises(ConfigurationError, match="these options changed: {'lr'"):
        train_script.train(config)
    with pytest.raises(ConfigurationError, match="already has checkpoints"):
        train_script.train(demo_config(unimed_repo, tokenizer_dir, finished_run.parent))


def checkpoint_files(path: Path) -> dict[str, bytes]:
    return {str(file.relative_to(path)): file.read_bytes() for file in sorted(path.rglob("*")) if file.is_file()}


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, unimed_repo, tokenizer_dir):
    """Also the loss seam: a loss registered by name is the one train.py uses."""
    calls, saved = [], {}

    class NanInStep5(loss.InfoNCELoss):
        def forward(self, *args):
            calls.append(1)
            if len(calls) == 4:  # the checkpoint of step 3 exists by now: remember its bytes
                saved.update(checkpoint_files(checkpointing.list_checkpoints(tmp_path)[-1]))
            value = super().forward(*args)
            return value * float("nan") if len(calls) == 5 else value

    monkeypatch.setitem(loss.LOSSES, "nan-in-step-5", NanInStep5)
    with pytest.raises(train_script.NonFiniteLossError, match="Loss is nan at step 5; .*step-00000003"):
        train_script.train(demo_config(unimed_repo, tokenizer_dir, tmp_path, loss="nan-in-step-5"))
    checkpoints = checkpointing.list_checkpoints(tmp_path)
    assert [p.name for p in checkpoints] == ["step-00000003"]
    assert checkpoint_files(checkpoints[0]) == saved and not (tmp_path / "final").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem of a chosen size (tmpfs), where writes fail as they do on a full disk."""

    @contextlib.contextmanager
    def mount(size_bytes: int):
        """Yields the folder and a function that resizes its filesystem (to free space)."""
        folder = tmp_path / "disk"
        folder.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(folder)], capture_output=True, text=True
        )
        if result.returncode:
            pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip()}): needs root or CAP_SYS_ADMIN")

        def resize(size: int) -> None:
            subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)

        try:
            yield folder, resize
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=False)

    return mount


def folder_size(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def test_full_disk_stops_cleanly_and_keeps_the_previous_checkpoint(
    small_disk, finished_run, unimed_repo, tokenizer_dir
):
    """`torch.save` on a full disk raises RuntimeError, not OSError: the run must still stop with a message, remove
    its partial checkpoint (freeing the disk) and keep the earlier ones; it resumes once there is space."""
    checkpoint = folder_size(checkpointing.list_checkpoints(finished_run.parent)[-1])
    with small_disk(int(1.6 * checkpoint)) as (disk, resize):  # room for one checkpoint, not two
        with pytest.raises(CheckpointWriteError, match=r"step 6 failed on 1 process\(es\) \((RuntimeError|OSError)"):
            train_script.train(demo_config(unimed_repo, tokenizer_dir, disk / "run"))
        assert [p.name for p in checkpointing.list_checkpoints(disk / "run")] == ["step-00000003"]
        assert not list((disk / "run" / "checkpoints").glob(".tmp-*"))
        assert folder_size(disk) < 1.1 * checkpoint  # the partial write is gone
        AcceleratorState._reset_state(reset_partial_state=True)
        resize(10 * checkpoint)  # space freed: the run continues where it stopped
        resumed = train_script.train(demo_config(unimed_repo, tokenizer_dir, disk / "run", resume="latest"))
        assert (resumed / "README.md").is_file()


def test_full_disk_during_the_final_export_leaves_no_partial_model(
    small_disk, finished_run, unimed_repo, tokenizer_dir
):
    checkpoint = folder_size(checkpointing.list_checkpoints(finished_run.parent)[-1])
    final = folder_size(finished_run)
    with small_disk(int(checkpoint + 0.5 * final)) as (disk, _):  # the checkpoint fits, the final model does not
        config = demo_config(unimed_repo, tokenizer_dir, disk / "run", max_steps=3, checkpoint_every=3)
        with pytest.raises(CheckpointWriteError, match="Writing the final model failed"):
            train_script.train(config)
        assert not (disk / "run" / "final").exists() and not list((disk / "run").glob(".tmp-*"))
        assert [p.name for p in checkpointing.list_checkpoints(disk / "run")] == ["step-00000003"]


class FlakyHub:
    """An HfApi stand-in whose uploads fail `failures` times, then succeed; or always fail."""

    def __init__(self, failures: int | None):
        self.failures, self.uploads, self.attempts = failures, [], 0

    def create_repo(self, repo_id, **kwargs):
        return repo_id

    def upload_folder(self, *, repo_id, folder_path, commit_message, **kwargs):
        self.attempts += 1
        if self.failures is None or self.attempts <= self.failures:
            raise ConnectionError("Hub unreachable")
        self.uploads.append((Path(folder_path).name, commit_message))
        return f"https://hub/{repo_id}/commit/{self.attempts}"


def test_push_to_hub_retries_failed_uploads(tmp_path, unimed_repo, tokenizer_dir):
    api = FlakyHub(failures=2)
    pusher = BackgroundPusher("org/unimed-clip-test", api=api, attempts=3, backoff_s=0)
    config = demo_config(unimed_repo, tokenizer_dir, tmp_path, max_steps=3, push_to_hub="org/unimed-clip-test")
    train_script.train(config, pusher=pusher)
    assert api.uploads == [("model", "Training checkpoint, step 3"), ("final", "UniMed-CLIP, end of training")]
    assert api.attempts == 4 and pusher.failed == []


def test_failing_hub_never_stops_training(tmp_path, unimed_repo, tokenizer_dir, caplog):
    api = FlakyHub(failures=None)
    pusher = BackgroundPusher("org/unimed-clip-test", api=api, attempts=2, backoff_s=0)
    config = demo_config(unimed_repo, tokenizer_dir, tmp_path, max_steps=3, push_to_hub="org/unimed-clip-test")
    assert train_script.train(config, pusher=pusher).is_dir()
    assert api.attempts == 4 and [p.name for p in pusher.failed] == ["model", "final"]
    assert "Gave up uploading" in caplog.text


def test_presets_are_all_printable(capsys):
    for preset in PRESETS:
        train_script.main(["--config", preset, "--print-config", "--tokenizer", "tok"])
        assert "lr:" in capsys.readouterr().out


def test_periodic_zero_shot_evaluation_is_logged(tmp_path, unimed_repo, tokenizer_dir):
    eval_root = tmp_path / "eval"
    for index, folder in enumerate(["lung_aca", "lung_n", "lung_scc"]):
        (eval_root / "LC25000_test" / folder).mkdir(parents=True)
        for copy in range(2):
            pixels = np.full((40, 40, 3), 60 * index + 30 * copy, dtype=np.uint8)
            Image.fromarray(pixels).save(eval_root / "LC25000_test" / folder / f"{copy}.png")
    output_dir = tmp_path / "run"
    config = demo_config(unimed_repo, tokenizer_dir, output_dir, max_steps=4, eval_every=2, eval_data=str(eval_root))
    final = train_script.train(config)
    accuracies = scalars(output_dir, "zero_shot/LC25000_lung")
    assert len(accuracies) == 2 and scalars(output_dir, "zero_shot/mean") == accuracies
    # The last evaluation ran on the final weights: evaluating them as saved gives the same accuracy. (In this
    # process, at the same batch size: this untrained model leaves near-ties between classes, which another process
    # or batch size may break the other way; the evaluation command's own equality is tested in test_evaluation.py.)
    saved = UniMedCLIPModel.from_pretrained(final), UniMedCLIPProcessor.from_pretrained(final)
    again = ZeroShotHook(eval_root)(*saved, torch.float32)["zero_shot/LC25000_lung"]
    assert again == pytest.approx(accuracies[-1], abs=1e-4)  # TensorBoard keeps float32


# Hostile and unlucky inputs (issue 13).


class SlowHub(FlakyHub):
    """Uploads that take `seconds` each (or never finish); records what existed when each upload began."""

    def __init__(self, seconds: float):
        super().__init__(failures=0)
        self.seconds, self.release = seconds, threading.Event()

    def upload_folder(self, *, repo_id, folder_path, commit_message, **kwargs):
        if not Path(folder_path).is_dir():
            raise FileNotFoundError(f"{folder_path} was deleted before its upload")
        self.release.wait(self.seconds)
        return super().upload_folder(repo_id=repo_id, folder_path=folder_path, commit_message=commit_message)


def test_rotation_keeps_checkpoints_until_they_are_uploaded(tmp_path, unimed_repo, tokenizer_dir):
    api = SlowHub(seconds=0.5)
    pusher = BackgroundPusher("org/unimed-clip-test", api=api, attempts=1, backoff_s=0)
    config = demo_config(
        unimed_repo, tokenizer_dir, tmp_path, max_steps=6, checkpoint_every=1, keep_checkpoints=1, push_to_hub="o/r"
    )
    train_script.train(config, pusher=pusher)
    assert pusher.failed == []  # before: 5 of 6 checkpoints were rotated away before their upload
    assert [message for _, message in api.uploads] == [
        *(f"Training checkpoint, step {step}" for step in range(1, 7)),
        "UniMed-CLIP, end of training",
    ]


def test_a_hung_upload_does_not_hang_the_end_of_training(tmp_path, unimed_repo, tokenizer_dir, caplog):
    api = SlowHub(seconds=3600)
    pusher = BackgroundPusher("org/unimed-clip-test", api=api, attempts=1, backoff_s=0)
    pusher.close = functools.partial(pusher.close, timeout_s=2)  # the default waits 10 minutes
    config = demo_config(unimed_repo, tokenizer_dir, tmp_path, max_steps=3, push_to_hub="o/r")
    started = time.monotonic()
    train_script.train(config, pusher=pusher)
    assert time.monotonic() - started < 60
    assert "Stopped waiting for uploads" in caplog.text and "step-00000003/model" in caplog.text
    api.release.set()


def test_non_finite_loss_sets_the_checkpoint_that_caused_it_aside(tmp_path, monkeypatch, unimed_repo, tokenizer_dir):
    """The checkpoint saved right before a non-finite loss holds the weights that produced it (the issue saw weights
    of 5e8 there): `--resume latest` must not pick it."""
    calls = []

    class NanInStep4(loss.InfoNCELoss):
        def forward(self, *args):
            calls.append(1)
            value = super().forward(*args)
            return value * float("nan") if len(calls) == 4 else value

    monkeypatch.setitem(loss.LOSSES, "nan-in-step-4", NanInStep4)
    match = (
        r"Loss is nan at step 4; stopping. Last good checkpoint: none; set aside as diverged: diverged-step-00000003"
    )
    with pytest.raises(train_script.NonFiniteLossError, match=match):
        train_script.train(demo_config(unimed_repo, tokenizer_dir, tmp_path, loss="nan-in-step-4"))
    assert checkpointing.list_checkpoints(tmp_path) == []
    assert (tmp_path / "checkpoints" / "diverged-step-00000003" / "trainer_state.json").is_file()  # kept, not lost


def test_non_finite_weights_are_never_written_as_a_checkpoint(tmp_path, monkeypatch, unimed_repo, tokenizer_dir):
    original = train_script.save_checkpoint

    def poisoned(accelerator, *args, **kwargs):
        raise AssertionError("save_checkpoint must not be reached")

    monkeypatch.setattr(train_script, "save_checkpoint", poisoned)
    monkeypatch.setattr(
        train_script,
        "check_finite_weights",
        lambda accelerator, model, step: checkpointing.check_finite_weights(accelerator, with_nan(model), step),
    )
    with pytest.raises(checkpointing.DivergedWeightsError, match="after step 3 hold non-finite values"):
        train_script.train(demo_config(unimed_repo, tokenizer_dir, tmp_path))
    monkeypatch.setattr(train_script, "save_checkpoint", original)


def with_nan(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    return model


def test_resume_from_an_older_checkpoint_is_refused_up_front(tmp_path, finished_run, unimed_repo, tokenizer_dir):
    run = shutil.copytree(finished_run.parent, tmp_path / "run")
    older = run / "checkpoints" / "step-00000009"
    config = demo_config(unimed_repo, tokenizer_dir, run, max_steps=10, resume=str(older))
    with pytest.raises(ConfigurationError, match=r"1 newer checkpoint\(s\) exist \(step-00000010\).*move the newer"):
        train_script.train(config)
    latest = demo_config(unimed_repo, tokenizer_dir, tmp_path / "empty", resume="latest")
    with pytest.raises(ConfigurationError, match="--resume latest: no checkpoint under"):
        train_script.train(latest)  # reported before the model and the data are set up


def test_resume_never_runs_code_planted_in_a_checkpoint(tmp_path, finished_run, unimed_repo, tokenizer_dir):
    run = shutil.copytree(finished_run.parent, tmp_path / "run")
    planted = tmp_path / "planted"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {planted}",))

    torch.save({"epoch": 0, "loader": Payload()}, run / "checkpoints" / "step-00000010" / "data_state_0.pt")
    config = demo_config(unimed_repo, tokenizer_dir, run, max_steps=10, resume="latest")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train_script.train(config)
    assert not planted.exists()


def test_data_where_no_batch_can_be_formed_stops_with_a_message(tmp_path, unimed_repo, tokenizer_dir):
    """Before: train.py waited for a full micro-batch forever, silently."""
    config = demo_config(unimed_repo, tokenizer_dir, tmp_path / "big", micro_batch_size=128, batch_size=128)
    with pytest.raises(EmptyEpochError, match=r"no full batch of 128 samples: 64 usable sample\(s\)"):
        train_script.train(config)
    AcceleratorState._reset_state(reset_partial_state=True)
    corrupt = write_unimed_repo(tmp_path / "corrupt", image_bytes=b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(EmptyEpochError, match=r"0 usable sample\(s\) on this process; skipped: \{'bad_image': 64\}"):
        train_script.train(demo_config(corrupt, tokenizer_dir, tmp_path / "corrupt-run"))


def test_skipped_samples_are_logged(tmp_path, tokenizer_dir):
    repo = write_unimed_repo(tmp_path / "repo", corrupt_every=8)
    output_dir = tmp_path / "run"
    train_script.train(demo_config(repo, tokenizer_dir, output_dir, max_steps=4, log_every=2))
    assert scalars(output_dir, "data/skipped_bad_image")[-1] > 0
