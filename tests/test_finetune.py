"""finetune.py and unimedclip.finetuning: methods, the zero-shot start, WiSE-FT, resume, inputs, bad inputs, the saved
classifier and its card."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_medical import write_dicom
from transformers import pipeline

from modeling_unimedclip import UniMedCLIPForImageClassification, UniMedCLIPModel, UniMedCLIPProcessor
from unimedclip.evaluation import Evaluator
from unimedclip.evaluation.readers import EvalDataset, ImageDataset, Sample
from unimedclip.finetuning import DataError, ModelError, finetune, parse_args
from unimedclip.finetuning.config import FinetuneConfig
from unimedclip.finetuning.data import load_labelled_data
from unimedclip.finetuning.model import load_processor
from unimedclip.finetuning.sampling import EpochBatches, class_weights
from unimedclip.finetuning.wise_ft import choose_coefficient, interpolate
from unimedclip.inference.zero_shot import expand_labels
from unimedclip.training import checkpointing
from unimedclip.training.config import ConfigurationError
from unimedclip.training.uploads import BackgroundPusher

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("finetune_script", ROOT / "finetune.py")
finetune_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(finetune_script)

# A learnable set: one colour per class, which the tiny random model's zero-shot head (random text tower) cannot tell.
COLOURS = {"tumor": (220, 40, 40), "normal": (40, 200, 60), "lesion": (50, 60, 220)}


def write_images(root: Path, per_class: int, seed: int = 0, colours: dict = COLOURS) -> Path:
    """`root/<class>/<n>.png`: noisy images of the class's colour, of an odd size."""
    rng = np.random.default_rng(seed)
    for name, colour in colours.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 50, (40, 47, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index:03d}.png")
    return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("images"), per_class=16)


@pytest.fixture(scope="module")
def test_folder(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("test-images"), per_class=6, seed=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def config(model: Path, data: Path | None, output_dir: Path | str, **overrides) -> FinetuneConfig:
    """Seconds on a CPU: 48 images, 12 validated, batch 12 (3 steps per epoch), no workers."""
    values = dict(
        model=str(model),
        image_folder=None if data is None else str(data),
        output_dir=str(output_dir),
        validation_fraction=0.25,
        batch_size=12,
        epochs=3,
        num_workers=0,
        eval_batch_size=64,
        log_every=1,
        mixed_precision="no",
    )
    return FinetuneConfig(**{**values, **overrides})


def results(output_dir: Path) -> dict:
    return json.loads((output_dir / "final" / "results.json").read_text())


def scalars(output_dir: Path, tag: str) -> list[float]:
    events = EventAccumulator(str(next((output_dir / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    return [event.value for event in events.Scalars(tag)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, model_dir, image_folder, test_folder) -> Path:
    """Full fine-tuning with a test set, class weights and balanced sampling: 9 steps, validated every epoch."""
    output_dir = tmp_path_factory.mktemp("run")
    run = config(
        model_dir, image_folder, output_dir, lr=1e-3, test=str(test_folder), class_weights=True, balanced_sampling=True
    )
    final = finetune(run)
    AcceleratorState._reset_state(reset_partial_state=True)
    return final


# Methods


@pytest.mark.parametrize(("method", "lr"), [("linear-probe", 3e-2), ("lora", 1e-2)], ids=["linear-probe", "lora"])
def test_each_method_improves_validation_accuracy(tmp_path, model_dir, image_folder, method, lr):
    finetune(config(model_dir, image_folder, tmp_path, method=method, lr=lr))
    report = results(tmp_path)
    before, after = report["before"]["validation"]["accuracy"], report["after"]["validation"]["accuracy"]
    assert after > before + 30, (before, after, report["validation_history"])
    if method == "linear-probe":  # the tower is frozen: only the head moved
        trained = UniMedCLIPForImageClassification.from_pretrained(tmp_path / "final")
        start = UniMedCLIPModel.from_pretrained(model_dir)
        assert torch.equal(trained.visual_projection.weight, start.visual_projection.weight)
        assert all(
            torch.equal(tensor, start.vision_model.state_dict()[name])
            for name, tensor in trained.vision_model.state_dict().items()
        )
    else:  # LoRA is merged: a plain classifier whose attention weights moved
        assert not list((tmp_path / "final").glob("adapter_*"))
        trained = load_file(tmp_path / "final" / "model.safetensors")
        start = load_file(Path(model_dir) / "model.safetensors")
        name = "vision_model.encoder.layers.0.self_attn.q_proj.weight"
        assert not torch.equal(trained[name], start[name])


def test_full_fine_tuning_improves_validation_and_test_accuracy(finished_run):
    report = results(finished_run.parent)
    for split in ("validation", "test"):
        before, after = report["before"][split]["accuracy"], report["after"][split]["accuracy"]
        assert after > before + 30, (split, before, after)
    assert report["data"]["test"]["images"] == 18 and report["data"]["validation"]["per_class"] == {
        "lesion": 4,
        "normal": 4,
        "tumor": 4,
    }
    assert set(report["after"]["test"]) >= {"accuracy", "balanced_accuracy", "auc", "classes", "confusion_matrix"}
    assert len(report["validation_history"]) == 3 and report["steps"] == 9


def test_zero_shot_point_is_the_zero_shot_evaluation(finished_run, model_dir, image_folder):
    """'before' equals evaluate_zero_shot.py's Evaluator on the same validation images with the same prompts."""
    run = config(model_dir, image_folder, "unused")
    data = load_labelled_data(run, load_processor(run).image_processor)
    validation = EvalDataset("validation", None, "accuracy", data.classes, data.splits["validation"].samples)
    model, processor = UniMedCLIPModel.from_pretrained(model_dir), UniMedCLIPProcessor.from_pretrained(model_dir)
    expected = Evaluator(model, processor).zero_shot(validation, expand_labels(data.classes))
    before = results(finished_run.parent)["before"]["validation"]
    assert before["accuracy"] == expected["accuracy"] and before["confusion_matrix"] == expected["confusion_matrix"]


def test_run_logs_checkpoints_and_best_model(finished_run):
    output_dir = finished_run.parent
    assert [p.name for p in checkpointing.list_checkpoints(output_dir)] == ["step-00000006", "step-00000009"]
    assert len(scalars(output_dir, "train/loss")) == 9
    assert len(scalars(output_dir, "validation/accuracy")) == 4  # before training, then every epoch
    best_step = results(output_dir)["after"]["best_step"]
    best = load_file(output_dir / "best" / "model.safetensors")
    assert all(torch.equal(best[k], v) for k, v in load_file(finished_run / "model.safetensors").items())
    checkpoint = checkpointing.checkpoint_dir(output_dir, best_step)
    if checkpoint.is_dir():
        exported = load_file(checkpoint / "model" / "model.safetensors")
        assert all(torch.equal(best[k], v) for k, v in exported.items())


# WiSE-FT


def test_wise_ft_interpolation_is_exact_at_the_ends():
    generator = torch.Generator().manual_seed(0)
    zero_shot = {"w": torch.randn(5, 3, generator=generator), "b": torch.randn(3, generator=generator)}
    fine_tuned = {"w": torch.randn(5, 3, generator=generator), "b": torch.randn(3, generator=generator)}
    for name in zero_shot:
        assert torch.equal(interpolate(zero_shot, fine_tuned, 0.0)[name], zero_shot[name])
        assert torch.equal(interpolate(zero_shot, fine_tuned, 1.0)[name], fine_tuned[name])
        torch.testing.assert_close(
            interpolate(zero_shot, fine_tuned, 0.3)[name], 0.7 * zero_shot[name] + 0.3 * fine_tuned[name]
        )
    with pytest.raises(ValueError, match=r"differ in \['b'\]"):
        interpolate(zero_shot, {"w": fine_tuned["w"]}, 0.5)
    scores = {0.0: 50.0, 0.5: 80.0, 0.7: 80.0, 1.0: float("nan")}
    assert choose_coefficient(list(scores), scores.get) == (0.5, scores)


@pytest.mark.parametrize("coefficient", [0.0, 1.0])
def test_wise_ft_at_0_and_1_ends_as_the_zero_shot_and_the_fine_tuned_model(
    tmp_path, model_dir, image_folder, coefficient
):
    finetune(
        config(
            model_dir, image_folder, tmp_path, lr=1e-3, max_steps=3, wise_ft=True, wise_ft_coefficients=[coefficient]
        )
    )
    final = load_file(tmp_path / "final" / "model.safetensors")
    if coefficient == 1.0:
        expected = load_file(tmp_path / "best" / "model.safetensors")
    else:  # the zero-shot classifier, built here from the checkpoint and the same prompts
        clip, processor = UniMedCLIPModel.from_pretrained(model_dir), UniMedCLIPProcessor.from_pretrained(model_dir)
        classes = sorted(COLOURS)
        prompts = expand_labels(classes)
        texts = [text for name in classes for text in prompts[name]]
        with torch.no_grad():
            embeds = clip.get_text_features(**processor(text=texts, padding=True)).pooler_output
        per_class = torch.nn.functional.normalize(embeds, dim=-1).view(len(classes), -1, embeds.shape[-1]).mean(1)
        expected = UniMedCLIPForImageClassification.from_zero_shot(clip, per_class, classes).state_dict()
    assert final.keys() == expected.keys()
    for name in final:
        torch.testing.assert_close(final[name], expected[name], atol=1e-6 if coefficient == 0.0 else 0, rtol=0)
    report = results(tmp_path)
    assert report["wise_ft"]["coefficient"] == coefficient
    if coefficient == 0.0:
        assert report["after"]["validation"]["accuracy"] == report["before"]["validation"]["accuracy"]


# Resume


class Killed(BaseException):
    """Like a SIGKILL: nothing in the run handles it."""


@pytest.mark.parametrize(
    ("method", "killed_in", "resumed_from"),
    [("lora", 6, "step-00000004"), ("full", 7, "step-00000006")],
    # 3 steps per epoch, checkpoints every 2. LoRA's dropout draws from the RNG the checkpoints restore.
    ids=["lora-inside-epoch-1", "full-across-the-epoch-boundary"],
)
def test_killed_and_resumed_run_ends_bit_identical(
    tmp_path, monkeypatch, model_dir, image_folder, method, killed_in, resumed_from
):
    def run(output_dir: Path, **overrides) -> Path:
        values = dict(method=method, lr=1e-2, max_steps=8, eval_every=3, checkpoint_every=2, balanced_sampling=True)
        final = finetune(config(model_dir, image_folder, output_dir, **values, **overrides))
        AcceleratorState._reset_state(reset_partial_state=True)
        return final

    run(tmp_path / "uninterrupted")
    forward, calls = UniMedCLIPForImageClassification.forward, []

    def dies(self, *args, **kwargs):
        if self.training:
            calls.append(1)
            if len(calls) == killed_in:
                raise Killed
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(UniMedCLIPForImageClassification, "forward", dies)
    with pytest.raises(Killed):
        run(tmp_path / "resumed")
    AcceleratorState._reset_state(reset_partial_state=True)
    assert checkpointing.list_checkpoints(tmp_path / "resumed")[-1].name == resumed_from
    monkeypatch.setattr(UniMedCLIPForImageClassification, "forward", forward)
    run(tmp_path / "resumed", resume="latest")

    # The final classifier (the best validation point), and the last step's weights and optimizer state.
    last = "checkpoints/step-00000008"
    for weights in ("final/model.safetensors", f"{last}/model/model.safetensors"):
        expected, actual = (load_file(tmp_path / run / weights) for run in ("uninterrupted", "resumed"))
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[name], actual[name]) for name in expected), weights
    expected, actual = (
        torch.load(tmp_path / run / last / "optimizer.bin", weights_only=True)["state"]
        for run in ("uninterrupted", "resumed")
    )
    assert all(torch.equal(expected[k]["exp_avg_sq"], actual[k]["exp_avg_sq"]) for k in expected)
    for key in ("before", "after", "validation_history", "data"):
        assert results(tmp_path / "resumed")[key] == results(tmp_path / "uninterrupted")[key], key


def test_resume_refuses_changed_options_and_new_runs_refuse_to_overwrite(finished_run, model_dir, image_folder):
    output_dir = finished_run.parent
    with pytest.raises(ConfigurationError, match=r"these options changed: .*'lr': \(0\.001, 0\.005\)"):
        finetune(config(model_dir, image_folder, output_dir, lr=5e-3, resume="latest"))
    with pytest.raises(ConfigurationError, match="already has checkpoints"):
        finetune(config(model_dir, image_folder, output_dir))


def test_early_stopping_ends_the_run_and_keeps_the_best(tmp_path, model_dir, image_folder):
    """A learning rate too small to change any prediction: no validation improves on the first."""
    finetune(config(model_dir, image_folder, tmp_path, lr=1e-9, epochs=20, early_stopping_patience=2))
    report = results(tmp_path)
    assert report["stopped_early"] and report["steps"] == 9 and report["after"]["best_step"] == 3
    assert [p.name for p in checkpointing.list_checkpoints(tmp_path)] == ["step-00000006", "step-00000009"]


# The saved classifier


REMOTE_PIPELINE = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class HideProject(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeling_unimedclip", "unimedclip", "dataset_scripts", "pydicom"):
                raise ImportError(f"{name} is hidden in this process")

    sys.meta_path.insert(0, HideProject())
    from transformers import pipeline

    classifier = pipeline("image-classification", model=sys.argv[1], trust_remote_code=True, top_k=None)
    print(json.dumps({"module": type(classifier.model).__module__, "scores": classifier(sys.argv[2])}))
    """
)


def test_final_classifier_works_in_the_pipeline_without_the_package(tmp_path, finished_run, test_folder):
    image = sorted((test_folder / "lesion").iterdir())[0]
    environment = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_PIPELINE, str(finished_run), str(image)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert remote["module"].startswith("transformers_modules.")
    model = UniMedCLIPForImageClassification.from_pretrained(finished_run).eval()
    processor = UniMedCLIPProcessor.from_pretrained(finished_run)
    with torch.no_grad():
        probabilities = model(pixel_values=processor(images=str(image)).pixel_values).logits[0].softmax(-1)
    scores = {entry["label"]: entry["score"] for entry in remote["scores"]}
    assert set(scores) == set(COLOURS) and max(scores, key=scores.get) == "lesion"
    expected = torch.tensor([scores[model.config.id2label[i]] for i in range(3)])
    torch.testing.assert_close(probabilities, expected, atol=1e-6, rtol=0)
    local = pipeline("image-classification", model=str(finished_run))(str(image))[0]
    assert local["label"] == "lesion"


def test_final_directory_holds_weights_processor_labels_card_and_results(finished_run, model_dir):
    files = {path.name for path in finished_run.iterdir()}
    assert {"model.safetensors", "config.json", "processor_config.json", "README.md", "results.json"} <= files
    saved = json.loads((finished_run / "config.json").read_text())
    assert saved["id2label"] == {"0": "lesion", "1": "normal", "2": "tumor"} and saved["label2id"]["tumor"] == 2
    card = (finished_run / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and "license: cc-by-nc-4.0" in card
    assert "base_model" not in card.split("---")[1]  # a local directory has no Hub id
    report = results(finished_run.parent)
    before, after = report["before"]["test"]["accuracy"], report["after"]["test"]["accuracy"]
    assert f"| test | Accuracy | {before:.2f} | {after:.2f} |" in card
    assert "full fine-tuning of the image tower and the head" in card and "non-commercial" in card


def test_card_names_the_base_model_as_finetune_and_the_push_uploads_the_final_model(tmp_path, model_dir, image_folder):
    class FakeHub:
        uploads = []

        def create_repo(self, repo_id, **kwargs):
            return repo_id

        def upload_folder(self, *, repo_id, folder_path, commit_message, **kwargs):
            FakeHub.uploads.append((repo_id, Path(folder_path).name, commit_message))

    pusher = BackgroundPusher("org/chest-classifier", api=FakeHub(), backoff_s=0)
    run = config(
        model_dir,
        image_folder,
        tmp_path,
        max_steps=3,
        push_to_hub="org/chest-classifier",
        base_model_id="unimed-clip/unimed-clip-vit-b16",
    )
    final = finetune(run, pusher=pusher)
    assert FakeHub.uploads == [
        ("org/chest-classifier", "model", "Fine-tuning checkpoint, step 3"),
        ("org/chest-classifier", "final", "UniMed-CLIP classifier, end of fine-tuning"),
    ]
    front_matter = (final / "README.md").read_text().split("---")[1]
    assert "\nbase_model: unimed-clip/unimed-clip-vit-b16\n" in front_matter
    assert "\nbase_model_relation: finetune\n" in front_matter
    assert "model-index:\n- name: chest-classifier" in front_matter and "split: validation" in front_matter


# Data


def test_sampler_is_seeded_per_epoch_and_splits_global_batches_over_processes():
    labels = [0] * 30 + [1] * 6 + [2] * 4
    ranks = [EpochBatches(labels, 4, 2, rank, 2, seed=0, balanced=False) for rank in range(2)]
    assert ranks[0].steps_per_epoch == 2 and len(ranks[0]) == 4  # 40 images // 16 per step
    micro = [list(rank) for rank in ranks]
    order = ranks[0].order()
    for step in range(2):  # micro-step m of rank r is images (2m + r) * 4 ... of the step's 16
        global_batch = order[step * 16 : (step + 1) * 16].tolist()
        taken = [micro[rank][2 * step + m] for m in range(2) for rank in range(2)]
        assert sum(taken, []) == global_batch
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != micro[0] and ranks[0].set_epoch(0) is None and list(ranks[0]) == micro[0]


def test_balanced_sampling_draws_classes_equally_and_class_weights_are_inverse_frequencies():
    labels = [0] * 80 + [1] * 15 + [2] * 5
    sampler = EpochBatches(labels, 100, 1, 0, 1, seed=0, balanced=True)
    drawn = Counter(labels[i] for epoch in range(20) for i in (sampler.set_epoch(epoch), sampler.order())[1])
    assert all(abs(count / 2000 - 1 / 3) < 0.03 for count in drawn.values()), drawn
    torch.testing.assert_close(class_weights(labels, 3), torch.tensor([100 / 240, 100 / 45, 100 / 15]))


def test_validation_is_a_stratified_seeded_share_of_the_training_data(image_folder, model_dir):
    processor = load_processor(config(model_dir, image_folder, "unused"))
    first = load_labelled_data(config(model_dir, image_folder, "unused"), processor.image_processor)
    again = load_labelled_data(config(model_dir, image_folder, "unused"), processor.image_processor)
    other = load_labelled_data(config(model_dir, image_folder, "unused", seed=1), processor.image_processor)
    assert first.splits["validation"].counts(first.classes) == {"lesion": 4, "normal": 4, "tumor": 4}
    assert first.splits["validation"].samples == again.splits["validation"].samples
    assert first.splits["validation"].samples != other.splits["validation"].samples
    train = {sample.image for sample in first.splits["train"].samples}
    assert not train & {sample.image for sample in first.splits["validation"].samples} and len(train) == 36
    assert "25% of" in first.splits["validation"].source and "seed 0" in first.splits["validation"].source


def test_csv_with_dicom_and_16_bit_images_and_the_processor_window(tmp_path, model_dir):
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for index in range(8):
        label = ["effusion", "normal"][index % 2]
        if index % 4 < 2:
            write_dicom(tmp_path / f"{index}.dcm", rng.integers(0, 2000, (24, 20)))
            rows.append(f"{index}.dcm,{label}")
        else:
            Image.fromarray(rng.integers(0, 65535, (24, 20), dtype=np.uint16)).save(tmp_path / f"{index}.png")
            rows.append(f"{index}.png,{label}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    csv = str(tmp_path / "labels.csv")
    run = config(model_dir, None, "unused", csv=csv, window="lung", validation_fraction=0.5)
    processor = load_processor(run)
    assert processor.image_processor.window == "lung"
    data = load_labelled_data(run, processor.image_processor)
    assert data.classes == ["effusion", "normal"] and sum(len(s.samples) for s in data.splits.values()) == 8
    dicom = tmp_path / "0.dcm"
    pixels = ImageDataset([Sample(dicom, 0)], processor.image_processor, decode=False)[0][0]
    default = UniMedCLIPProcessor.from_pretrained(model_dir).image_processor
    torch.testing.assert_close(pixels, default(str(dicom), window="lung").pixel_values[0])
    assert not torch.equal(pixels, default(str(dicom)).pixel_values[0])


@pytest.mark.parametrize("streaming", [False, True], ids=["downloaded", "streaming"])
def test_hugging_face_dataset_with_named_splits(tmp_path, model_dir, image_folder, streaming):
    import datasets

    def split(seed: int) -> datasets.Dataset:
        folder = write_images(tmp_path / f"images-{seed}", per_class=3, seed=seed)
        paths = sorted(folder.rglob("*.png"))
        return datasets.Dataset.from_dict(
            {"image": [str(p) for p in paths], "label": [p.parent.name for p in paths]},
            features=datasets.Features(
                {"image": datasets.Image(), "label": datasets.ClassLabel(names=sorted(COLOURS))}
            ),
        )

    hub = tmp_path / "hub"
    datasets.DatasetDict({"train": split(0), "validation": split(1), "test": split(2)}).save_to_disk(hub / "saved")
    for name in ("train", "validation", "test"):
        datasets.load_from_disk(hub / "saved")[name].to_parquet(hub / "data" / f"{name}-00000.parquet")
    shutil.rmtree(hub / "saved")
    run = config(model_dir, None, "unused", hf_dataset=str(hub), validation="validation", test="test")
    run.streaming = streaming
    data = load_labelled_data(run, load_processor(run).image_processor)
    assert data.classes == sorted(COLOURS)
    assert {name: len(split.samples) for name, split in data.splits.items()} == {
        "train": 9,
        "validation": 9,
        "test": 9,
    }
    assert data.splits["test"].source == f"{hub}:test"


# Bad input: a clear message naming the problem, nothing written before it


def test_single_class_is_refused(tmp_path, model_dir):
    data = write_images(tmp_path / "one", per_class=4, colours={"tumor": (200, 0, 0)})
    with pytest.raises(DataError, match=r"at least two classes; .* has only \['tumor'\]"):
        finetune(config(model_dir, data, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_label_missing_from_the_class_list_is_named(tmp_path, model_dir, image_folder):
    with pytest.raises(DataError, match=r"label\(s\) 'lesion' \(16 images\) are not in the class list"):
        finetune(config(model_dir, image_folder, tmp_path / "run", classes=["tumor", "normal"]))
    assert not (tmp_path / "run").exists()


def test_unreadable_images_are_skipped_and_counted(tmp_path, model_dir):
    data = write_images(tmp_path / "images", per_class=8)
    (data / "tumor" / "broken.png").write_bytes(b"not an image")
    (data / "normal" / "empty.png").write_bytes(b"")
    finetune(config(model_dir, data, tmp_path / "run", max_steps=2, batch_size=8))
    described = results(tmp_path / "run")["data"]
    assert described["train"]["unreadable"] == 2
    assert sorted(Path(p).name for p in described["train"]["unreadable_examples"]) == ["broken.png", "empty.png"]
    assert described["train"]["images"] + described["validation"]["images"] == 24


def test_a_validation_split_without_some_class_is_refused(tmp_path, model_dir):
    data = write_images(tmp_path / "images", per_class=12)
    for extra in sorted((data / "lesion").iterdir())[1:]:
        extra.unlink()  # one lesion image: it cannot be both trained on and validated
    with pytest.raises(DataError, match=r"Cannot hold out a stratified 25% .*'lesion': 1.*--validation"):
        finetune(config(model_dir, data, tmp_path / "run"))
    # 5% of 82 images is 5, shared in proportion to the classes: none is left for the 2 lesions.
    skewed = write_images(tmp_path / "skewed", per_class=40, colours={k: COLOURS[k] for k in ("tumor", "normal")})
    write_images(skewed, per_class=2, colours={"lesion": COLOURS["lesion"]})
    with pytest.raises(DataError, match=r"leaves no validation image of class\(es\) \['lesion'\]"):
        finetune(config(model_dir, skewed, tmp_path / "run", validation_fraction=0.05))
    assert not (tmp_path / "run").exists()


def test_a_classifier_checkpoint_with_other_classes_is_refused(tmp_path, finished_run):
    data = write_images(tmp_path / "two", per_class=8, colours={"tumor": (200, 0, 0), "normal": (0, 200, 0)})
    with pytest.raises(
        ModelError, match=r"classifier of 3 classes \['lesion', 'normal', 'tumor'\], but the data has 2"
    ):
        finetune(config(finished_run, data, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_continuing_a_classifier_of_the_same_classes(tmp_path, finished_run, image_folder):
    finetune(config(finished_run, image_folder, tmp_path / "run", max_steps=3, lr=1e-4))
    report = results(tmp_path / "run")
    assert report["before"]["model"].endswith("as it is")
    assert report["before"]["validation"]["accuracy"] > 60  # it starts where the first run ended
    with pytest.raises(ModelError, match="WiSE-FT mixes in the zero-shot classifier"):
        finetune(config(finished_run, image_folder, tmp_path / "again", wise_ft=True))


def test_command_line_errors_exit_with_the_message(tmp_path, model_dir, capsys):
    data = write_images(tmp_path / "one", per_class=4, colours={"tumor": (200, 0, 0)})
    arguments = ["--model", str(model_dir), "--image-folder", str(data), "--output-dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit, match="finetune.py: error: A classifier needs at least two classes"):
        finetune_script.main([*arguments, "--num-workers", "0"])
    with pytest.raises(SystemExit):
        finetune_script.main([*arguments, "--csv", "x.csv", "--lr", "-1", "--window", "soft tissue"])
    message = capsys.readouterr().err
    assert "give exactly one of --image-folder, --csv and --hf-dataset" in message
    assert "lr must be a positive number" in message and "'soft tissue' is neither a window preset" in message


def test_options_take_both_spellings_trainer_names_and_yaml(tmp_path):
    common = ["--model", "m", "--output_dir", "o", "--csv", "x.csv"]
    parsed = parse_args([*common, "--learning_rate", "3e-4", "--per-device-train-batch-size", "8", "--wise-ft"])
    assert (parsed.lr, parsed.micro_batch_size, parsed.wise_ft) == (3e-4, 8, True)
    assert parse_args([*common, "--method", "linear-probe"]).lr == 1e-3  # the method's default, recorded
    (tmp_path / "run.yaml").write_text("model: m\noutput_dir: o\nimage_folder: d\nsave_steps: 7\nmethod: lora\n")
    from_file = parse_args([str(tmp_path / "run.yaml")])
    assert (from_file.checkpoint_every, from_file.method, from_file.lr) == (7, "lora", 1e-4)
