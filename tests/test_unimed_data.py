"""The streaming UniMed loader on tiny repositories written here in the UniMed layout (card + WebDataset shards)."""

import io
import json
import random
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from datasets import load_dataset
from PIL import Image
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from modeling_unimedclip import UniMedCLIPImageProcessor
from unimedclip.data import EmptyEpochError, UniMedCollator, load_unimed, normalize_pixels, unimed_dataloader
from unimedclip.data.records import choose_caption, make_record
from unimedclip.data.sources import get_source
from unimedclip.data.transforms import random_resized_crop_box, train_transform

RECORD_FEATURES = [
    {"name": "source", "dtype": "string"},
    {"name": "modality", "dtype": "string"},
    {"name": "captions", "list": "string"},
    {"name": "caption_rule", "dtype": "string"},
    {"name": "report", "dtype": "string"},
    {"name": "labels", "list": "string"},
    {"name": "license", "dtype": "string"},
    {"name": "path", "dtype": "string"},
    {"name": "resized_from", "list": "int32"},
]


def image_bytes(seed: int, size: tuple[int, int] = (28, 20), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, fmt)
    return buffer.getvalue()


def record(source: str, modality: str, captions: list[str], report: str | None = None) -> bytes:
    fields = dict(modality=modality, captions=captions, report=report, labels=[], path="raw/path", resized_from=None)
    return json.dumps(make_record(get_source(source), **fields)).encode()


def sample(key: str, source: str = "openi", modality: str = "xray", captions=None, **fields) -> dict:
    return {
        "key": key,
        "image": fields.get("image", image_bytes(zlib.crc32(key.encode()))),
        "json": fields.get("json", record(source, modality, captions or [f"caption of {key}"], fields.get("report"))),
    }


def write_repo(root: Path, shards: dict[str, list[list[dict]]], sizes: bool = True) -> Path:
    """A UniMed repository: `data/<modality>/<modality>-NNNNNN.tar` and a card with one config per modality + all."""
    configs, infos = [], []
    for modality, modality_shards in shards.items():
        for index, shard in enumerate(modality_shards):
            path = root / "data" / modality / f"{modality}-{index:06d}.tar"
            path.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(path, "w") as tar:
                for item in shard:
                    for field in ("image", "json"):
                        if item[field] is not None:
                            info = tarfile.TarInfo(f"{item['key']}.{field}")
                            info.size = len(item[field])
                            tar.addfile(info, io.BytesIO(item[field]))
        configs.append({"config_name": modality, "data_files": [{"split": "train", "path": f"data/{modality}/*.tar"}]})
        info = {"config_name": modality, "features": [{"name": "image", "dtype": "image"}]}
        info["features"].append({"name": "json", "struct": RECORD_FEATURES})
        if sizes:
            count = sum(len(shard) for shard in modality_shards)
            info["splits"] = [{"name": "train", "num_bytes": 1000 * count, "num_examples": count}]
        infos.append(info)
    configs.append({"config_name": "all", "data_files": [{"split": "train", "path": "data/*/*.tar"}]})
    card = yaml.safe_dump({"configs": configs, "dataset_info": infos}, sort_keys=False)
    (root / "README.md").write_text(f"---\n{card}---\n# UniMed (test)\n")
    return root


def collect_keys(samples: list[dict]) -> dict:
    return {"keys": [s["__key__"] for s in samples], "captions": [s["caption"] for s in samples]}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """xray: 4 shards x 3 (openi); fundus: 4 shards x 2 (retina_flair, 11 captions)."""
    xray = [[sample(f"x{s}{i}") for i in range(3)] for s in range(4)]
    captions = [f"retina caption {n}" for n in range(10)] + ["sentence level caption"]
    fundus = [[sample(f"f{s}{i}", "retina_flair", "fundus", captions) for i in range(2)] for s in range(4)]
    return write_repo(tmp_path_factory.mktemp("unimed"), {"xray": xray, "fundus": fundus})


ALL_KEYS = sorted([f"x{s}{i}" for s in range(4) for i in range(3)] + [f"f{s}{i}" for s in range(4) for i in range(2)])


def test_card_loads_with_datasets(repo):
    loaded = list(load_dataset(str(repo), "xray", split="train", streaming=True))
    assert len(loaded) == 12
    assert isinstance(loaded[0]["image"], Image.Image) and loaded[0]["image"].size == (28, 20)
    assert loaded[0]["json"]["source"] == "openi" and loaded[0]["json"]["captions"] == ["caption of x00"]


def test_caption_rules():
    def parsed(source: str, captions: list[str], report: str | None = None) -> dict:
        return json.loads(record(source, "xray", captions, report))

    rng = random.Random(0)
    mimic = parsed("mimic_cxr", [f"llm {n}" for n in range(10)], " FINDINGS: clear. ")
    assert choose_caption(mimic, rng) == "FINDINGS: clear."
    no_report = {**mimic, "report": None}
    assert {choose_caption(no_report, rng) for _ in range(100)} == {f"llm {n}" for n in range(10)}
    assert choose_caption(parsed("openi", ["original", "refined"]), rng) == "original"
    flair = parsed("retina_flair", [f"llm {n}" for n in range(10)] + ["sentence"])
    assert "sentence" not in {choose_caption(flair, rng) for _ in range(200)}
    assert choose_caption(parsed("chexpert", ["", " "]), rng) == ""


def test_caption_choice_is_deterministic_per_seed_and_epoch(repo):
    def fundus_captions(seed: int, epoch: int) -> dict[str, str]:
        dataset = load_unimed(str(repo), modalities=["fundus"], seed=seed)
        dataset.set_epoch(epoch)
        return {s["__key__"]: s["caption"] for s in dataset}

    first = fundus_captions(seed=0, epoch=0)
    assert len(first) == 8 and len(set(first.values())) >= 4
    assert fundus_captions(seed=0, epoch=0) == first
    assert fundus_captions(seed=0, epoch=1) != first
    assert fundus_captions(seed=1, epoch=0) != first


def test_shard_order_follows_seed_and_epoch(repo):
    def shard_order(seed: int, epoch: int) -> list[str]:
        dataset = load_unimed(str(repo), modalities=["xray"], seed=seed)
        dataset.set_epoch(epoch)
        return list(dict.fromkeys(s["__key__"][:2] for s in dataset))

    orders = {(seed, epoch): shard_order(seed, epoch) for seed in range(3) for epoch in range(3)}
    assert shard_order(1, 2) == orders[1, 2]
    assert len({tuple(order) for order in orders.values()}) > 3


def test_default_weights_follow_modality_sizes(tmp_path):
    shards = {
        "xray": [[sample(f"x{s}{i}") for i in range(30)] for s in range(2)],
        "fundus": [[sample(f"f{s}{i}", "retina_flair", "fundus") for i in range(6)] for s in range(2)],
    }
    root = write_repo(tmp_path / "sized", shards)

    def mean_fundus_position(**kwargs) -> float:
        keys = [s["__key__"] for s in load_unimed(str(root), **kwargs)]
        assert sorted(keys) == sorted(s["key"] for shard in shards.values() for part in shard for s in part)
        return float(np.mean([n for n, key in enumerate(keys) if key.startswith("f")]))

    # Proportional mixing spreads the 12 fundus samples over all 72; equal weights use them up early.
    assert 25 < mean_fundus_position() < 47
    assert mean_fundus_position(weights={"xray": 1, "fundus": 1}) < 16

    unsized = write_repo(tmp_path / "unsized", shards, sizes=False)
    with pytest.raises(ValueError, match="pass `weights`"):
        load_unimed(str(unsized))
    assert len(list(load_unimed(str(unsized), weights={"xray": 5, "fundus": 1}))) == 72


def test_two_ranks_with_two_workers_see_every_sample_once_per_epoch(repo):
    for epoch in (0, 1):
        keys = []
        for rank in range(2):
            dataset = load_unimed(str(repo), seed=3, rank=rank, world_size=2)
            dataset.set_epoch(epoch)
            loader = unimed_dataloader(dataset, batch_size=1, num_workers=2, collate_fn=collect_keys)
            keys += [key for batch in loader for key in batch["keys"]]
        assert sorted(keys) == ALL_KEYS


def test_resume_after_k_batches_matches_an_uninterrupted_run(tmp_path, tiny_tokenizer):
    xray = [[sample(f"x{s}{i}") for i in range(5)] for s in range(2)]
    xray[1][2]["image"] = b"not an image"
    captions = [f"c{n}" for n in range(10)]
    fundus = [[sample(f"f{s}{i}", "retina_flair", "fundus", captions) for i in range(3)] for s in range(2)]
    root = write_repo(tmp_path, {"xray": xray, "fundus": fundus})

    def batches(state=None, stop=None):
        dataset = load_unimed(str(root), seed=5, image_size=16)
        dataset.set_epoch(1)
        loader = unimed_dataloader(dataset, batch_size=2, num_workers=2, collate_fn=UniMedCollator(tiny_tokenizer))
        if state is not None:
            loader.load_state_dict(state)
        out = []
        for batch in loader:
            out.append(batch)
            if len(out) == stop:
                return out, loader.state_dict()
        return out, dict(loader.skipped_samples)

    full, skipped = batches()
    head, state = batches(stop=3)
    tail, resumed_skipped = batches(state=state)
    assert len(full) == 7 and skipped == resumed_skipped == {"bad_image": 1, "partial_batch": 1}
    for expected, got in zip(full, head + tail, strict=True):
        assert expected.keys() == got.keys()
        for name in expected:
            assert torch.equal(expected[name], got[name]), name


def test_corrupt_samples_and_truncated_shards_are_skipped_and_counted(tmp_path):
    good = [sample(f"g{i}") for i in range(4)]
    broken = [
        sample("bad_image", image=b"\x89PNG\r\n\x1a\n truncated"),
        sample("bad_json", json=b'{"source": "openi", '),
        sample("deep_json", json=b"[" * 100_000 + b"]" * 100_000),  # RecursionError, which used to stop training
        sample("unknown_rule", json=record("openi", "xray", ["a caption"]).replace(b'"first"', b'"longest"')),
        sample("empty_caption", captions=[" "]),
        {**sample("no_record"), "json": None},
    ]
    cut = [sample(f"c{i}", "retina_flair", "fundus") for i in range(3)]
    root = write_repo(tmp_path, {"xray": [good[:1] + broken + good[1:]], "fundus": [cut]})
    truncated = root / "data" / "fundus" / "fundus-000000.tar"
    with tarfile.open(truncated) as tar:
        second_image = tar.getmember("c1.image")
    truncated.write_bytes(truncated.read_bytes()[: second_image.offset_data + 100])

    # Skips are reported with the next good sample, so the truncated fundus shard is drawn first.
    dataset = load_unimed(str(root), weights={"xray": 1, "fundus": 1000})
    loader = unimed_dataloader(dataset, batch_size=1, num_workers=0, collate_fn=collect_keys)
    keys = [key for batch in loader for key in batch["keys"]]
    assert keys[0] == "c0" and sorted(keys[1:]) == ["g0", "g1", "g2", "g3"]
    expected = {"bad_image": 1, "bad_record": 3, "no_caption": 1, "missing_member": 1, "truncated_shard": 1}
    assert loader.skipped_samples == expected


def test_collator_pads_to_the_longest_caption_and_cleans_text(tiny_tokenizer):
    pixels = torch.zeros(3, 8, 8, dtype=torch.uint8)
    samples = [
        {"pixel_values": pixels, "caption": "chest  x ray &amp;amp; lung"},
        {"pixel_values": pixels, "caption": "a"},
    ]
    batch = UniMedCollator(tiny_tokenizer)(samples)
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask"}
    assert batch["pixel_values"].shape == (2, 3, 8, 8) and batch["pixel_values"].dtype == torch.uint8
    expected = tiny_tokenizer("chest x ray & lung")["input_ids"]
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == (2, len(expected))
    assert batch["input_ids"][0].tolist() == expected
    assert batch["attention_mask"].tolist() == [[1] * len(expected), [1, 1, 1] + [0] * (len(expected) - 3)]

    long_caption = [{"pixel_values": pixels, "caption": "lung " * 400}]
    assert UniMedCollator(tiny_tokenizer)(long_caption)["input_ids"].shape == (1, 256)
    assert UniMedCollator(tiny_tokenizer, max_length=16)(long_caption)["input_ids"].shape == (1, 16)


def test_train_transform_shape_dtype_and_determinism():
    image = Image.open(io.BytesIO(image_bytes(1, size=(120, 90), fmt="JPEG")))
    out = train_transform(image, 32, random.Random("a"))
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out, train_transform(image, 32, random.Random("a")))
    assert not torch.equal(out, train_transform(image, 32, random.Random("b")))

    gray = Image.open(io.BytesIO(image_bytes(2, size=(60, 50), mode="L")))
    gray_out = train_transform(gray, 24, random.Random(0))
    assert torch.equal(gray_out, train_transform(gray.convert("RGB"), 24, random.Random(0)))
    assert torch.equal(gray_out[0], gray_out[2])


def test_train_transform_matches_torchvision_resized_crop():
    functional = pytest.importorskip("torchvision.transforms.v2.functional")

    image = Image.open(io.BytesIO(image_bytes(3, size=(97, 64))))
    left, top, width, height = random_resized_crop_box(97, 64, random.Random(7))
    bicubic = functional.InterpolationMode.BICUBIC
    expected = functional.pil_to_tensor(functional.resized_crop(image, top, left, height, width, [40, 40], bicubic))
    assert torch.equal(train_transform(image, 40, random.Random(7)), expected)


def test_normalize_pixels():
    pixels = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    out = normalize_pixels(pixels, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert out.dtype == torch.float32 and out.flatten().tolist() == [-1.0, 1.0] * 3
    assert torch.equal(normalize_pixels(pixels[0], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)), out[0])  # (3, H, W)
    with pytest.raises(ValueError, match="uint8"):
        normalize_pixels(pixels.float())


def test_training_pixels_equal_the_processor_on_the_same_crop():
    """Normalisation on the training device, with the real (asymmetric, per-channel) mean and std, gives the pixels the
    evaluation processor gives for the same crop: a swap of mean and std, or of channels, shows."""
    image = Image.open(io.BytesIO(image_bytes(4, size=(97, 64))))
    crop = train_transform(image, 32, random.Random(3))  # uint8 (3, 32, 32), as the workers deliver it
    as_image = Image.fromarray(crop.permute(1, 2, 0).numpy())
    expected = UniMedCLIPImageProcessor(size=32)(as_image).pixel_values  # a 32 px image: resize and crop keep it
    torch.testing.assert_close(normalize_pixels(crop[None]), expected, rtol=0, atol=1e-6)
    assert OPENAI_CLIP_MEAN != OPENAI_CLIP_STD and len(set(OPENAI_CLIP_MEAN)) == 3  # the fixture can tell a swap


class TorchvisionDraws:
    """`random.Random`'s `uniform` and `randint`, drawn from torch's generator the way torchvision's
    `RandomResizedCrop.get_params` draws them, so that both can be fed the same random numbers."""

    def uniform(self, low: float, high: float) -> float:
        return torch.empty(1).uniform_(low, high).item()

    def randint(self, low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, size=(1,)).item())


@pytest.mark.parametrize("width, height", [(300, 300), (320, 300), (300, 320)])
def test_crop_boxes_are_torchvisions_random_resized_crop(width, height):
    """Against torchvision's `RandomResizedCrop(scale=(0.9, 1.0)).get_params` itself. Fed the same random numbers,
    every crop has torchvision's size (to rounding at a half pixel); its position, drawn in the other order, follows
    the same uniform distribution. (A 3:2 image cannot hold 90 % of its area at a ratio within 3:4-4:3: every draw
    misses and both fall back to the centre crop, which the next test checks.)"""
    from torchvision.transforms import RandomResizedCrop

    image, draws = torch.zeros(1, height, width), 2000
    reference, ours = [], []
    for seed in range(draws):
        torch.manual_seed(seed)
        top, left, h, w = RandomResizedCrop.get_params(image, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3))
        reference.append((left, top, w, h))
        torch.manual_seed(seed)
        ours.append(random_resized_crop_box(width, height, TorchvisionDraws()))
    same_size = np.mean([mine[2:] == theirs[2:] for mine, theirs in zip(ours, reference, strict=True)])
    assert same_size > 0.99, same_size
    assert all(isinstance(value, int) for box in ours for value in box)
    assert all(0 <= left <= width - w and 0 <= top <= height - h for left, top, w, h in ours)

    def relative_positions(boxes):
        return np.array(
            [(left / (width - w), top / (height - h)) for left, top, w, h in boxes if w < width and h < height]
        )

    mine, theirs = relative_positions(ours), relative_positions(reference)
    assert len(mine) > draws / 2
    for axis in (0, 1):
        for q in (0.1, 0.5, 0.9):
            assert abs(np.quantile(mine[:, axis], q) - np.quantile(theirs[:, axis], q)) < 0.06


@pytest.mark.parametrize("width, height", [(1, 2), (2, 1), (3, 2)])
def test_crop_sizes_of_images_a_few_pixels_wide_are_torchvisions(width, height):
    """Crops one pixel wide or high are valid crops, not misses that fall back to the centre crop."""
    from torchvision.transforms import RandomResizedCrop

    image = torch.zeros(1, height, width)
    for seed in range(200):
        torch.manual_seed(seed)
        _, _, h, w = RandomResizedCrop.get_params(image, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3))
        torch.manual_seed(seed)
        assert random_resized_crop_box(width, height, TorchvisionDraws())[2:] == (w, h), seed


@pytest.mark.parametrize("width, height", [(300, 200), (200, 300), (301, 200), (1, 1)])
def test_crop_boxes_fall_back_to_torchvisions_centre_crop(width, height):
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    top, left, h, w = RandomResizedCrop.get_params(
        torch.zeros(1, height, width), scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)
    )
    for seed in range(20):
        assert random_resized_crop_box(width, height, random.Random(seed)) == (left, top, w, h)


def test_palette_and_alpha_images_are_converted_to_rgb_before_the_crop():
    functional = pytest.importorskip("torchvision.transforms.v2.functional")
    bicubic = functional.InterpolationMode.BICUBIC
    rgb = Image.open(io.BytesIO(image_bytes(5, size=(97, 64)))).convert("RGB")
    for image in (rgb.quantize(16), rgb.convert("RGBA")):
        left, top, width, height = random_resized_crop_box(97, 64, random.Random(2))
        expected = functional.resized_crop(image.convert("RGB"), top, left, height, width, [40, 40], bicubic)
        assert torch.equal(train_transform(image, 40, random.Random(2)), functional.pil_to_tensor(expected))


def test_bad_arguments_raise_clear_errors(repo):
    with pytest.raises(ValueError, match="rank"):
        load_unimed(str(repo), rank=2, world_size=2)
    with pytest.raises(ValueError, match="'ct'"):
        load_unimed(str(repo), modalities=["ct"])
    with pytest.raises(ValueError, match="fewer than world_size=8"):
        load_unimed(str(repo), world_size=8)
    with pytest.raises(ValueError, match="one entry per loaded modality"):
        load_unimed(str(repo), weights={"xray": 1})
    with pytest.warns(UserWarning, match="4 shards, not a multiple of world_size=3"):
        load_unimed(str(repo), rank=0, world_size=3)
    with pytest.warns(UserWarning, match="not a multiple of num_workers=3"):
        unimed_dataloader(load_unimed(str(repo)), batch_size=2, num_workers=3, collate_fn=collect_keys)


def test_skips_at_the_end_of_the_stream_are_counted(tmp_path):
    """Before: skips after a worker's last good sample, and those carried by the dropped last partial batch, were
    never reported."""
    shard = [sample("g0"), sample("bad0", image=b"not an image"), sample("g1"), sample("g2")]
    shard += [sample("bad1", image=b"not an image"), sample("bad2", captions=[" "])]
    root = write_repo(tmp_path, {"xray": [shard]})
    loader = unimed_dataloader(load_unimed(str(root)), batch_size=2, num_workers=0, collate_fn=collect_keys)
    assert [batch["keys"] for batch in loader] == [["g0", "g1"]]
    assert loader.skipped_samples == {"bad_image": 2, "no_caption": 1, "partial_batch": 1}


def test_an_epoch_without_one_full_batch_is_an_error(tmp_path):
    root = write_repo(tmp_path, {"xray": [[sample("g0"), sample("bad", image=b"not an image")]]})
    loader = unimed_dataloader(load_unimed(str(root)), batch_size=2, num_workers=0, collate_fn=collect_keys)
    with pytest.raises(EmptyEpochError, match=r"no full batch of 2 samples: 1 usable sample\(s\).*'bad_image': 1"):
        list(loader)
