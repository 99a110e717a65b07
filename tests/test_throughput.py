"""Training throughput: model FLOPs against PyTorch's FLOP counter, the peak table and MFU, the device-side loss
record, training steps that never wait for the device (profiled), and JPEG decoding on the training device."""

import io
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import tiny_config
from PIL import Image
from test_train import demo_config, scalars, train_script, write_unimed_repo
from test_unimed_data import sample, write_repo
from torch.utils.flop_counter import FlopCounterMode

from modeling_unimedclip import UniMedCLIPModel
from unimedclip.data import UniMedCollator, device_decode, load_unimed, unimed_dataloader
from unimedclip.data.device_decode import (
    DeviceDecodeCollator,
    DeviceDecodeStream,
    decode_crop_resize,
    device_decodable_size,
    pixels_on_device,
)
from unimedclip.data.transforms import random_resized_crop_box, train_transform
from unimedclip.training import loss
from unimedclip.training.interval import IntervalRecord
from unimedclip.training.loss import ContrastiveTrainingModel, create_loss
from unimedclip.training.profiling import synchronising_calls_per_step, unexpected_waits
from unimedclip.training.throughput import PEAK_TFLOPS, Throughput, peak_flops, training_flops_per_pair
from unimedclip.variants import VARIANTS


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


# Model FLOPs


@pytest.mark.parametrize("lock_image, lock_text", [(False, False), (True, False), (False, True)])
def test_training_flops_per_pair_match_pytorchs_flop_counter(lock_image, lock_text):
    """Forward and backward of a training step, counted by `torch.utils.flop_counter` (eager attention: the counter
    has no formula for the CPU's fused SDPA). The tiny towers have distinct widths, depths and lengths (17 image
    tokens, 11 caption tokens), so that a misplaced term shows."""
    config = tiny_config()
    config.text_config.num_hidden_layers = 3
    model = UniMedCLIPModel(config).train()
    model.set_attn_implementation("eager")
    if lock_image:
        model.vision_model.requires_grad_(False)
        model.visual_projection.requires_grad_(False)
    if lock_text:
        model.text_model.requires_grad_(False)
    training_model = ContrastiveTrainingModel(model, create_loss("infonce"))
    batch, length = 5, 11
    pixel_values = torch.randn(batch, 3, 32, 32)
    input_ids = torch.randint(5, 90, (batch, length))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[::2, 7:] = 0

    with FlopCounterMode(display=False) as counter:
        loss, _ = training_model(pixel_values, input_ids, attention_mask)
        loss.backward()
    expected = batch * training_flops_per_pair(
        config, length, negatives=batch, train_image=not lock_image, train_text=not lock_text
    )
    # The model's forward also computes its own logits (text x image), which the training loss does not use; with the
    # image tower frozen, one of the loss's products has no gradient to the image side (the formula counts it).
    logits = 2 * batch * batch * config.projection_dim
    assert counter.get_total_flops() == expected + logits - (logits if lock_image else 0)


def test_b16_flops_at_the_recipes_lengths():
    """Hand arithmetic for ViT-B/16 + BiomedBERT-base, captions of 80 tokens, 2,048 negatives: about 147 GFLOP."""
    config = VARIANTS["b16"].config()
    patch_embedding = 2 * 196 * (3 * 16 * 16) * 768
    image_layers = 12 * (8 * 197 * 768**2 + 4 * 197 * 768 * 3072 + 4 * 197**2 * 768)
    text_layers = 12 * (8 * 80 * 768**2 + 4 * 80 * 768 * 3072 + 4 * 80**2 * 768)
    projections = 2 * 768 * 512 + 2 * 768 * 640 + 2 * 640 * 512
    loss = 4 * 2048 * 512
    expected = 2 * patch_embedding + 3 * (image_layers + text_layers + projections + loss)
    assert training_flops_per_pair(config, 80, negatives=2048) == expected
    assert 146e9 < expected < 148e9


@pytest.mark.parametrize(
    "name, tflops",
    [
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H100 NVL", 835),
        ("NVIDIA H200", 989),
        ("NVIDIA GH200 480GB", 989),
        ("NVIDIA A100-SXM4-40GB", 312),
        ("NVIDIA L40S", 362),
        ("NVIDIA L4", 121),
        ("NVIDIA A10G", None),  # not A10
        ("Tesla V100-SXM2-16GB", None),
    ],
)
def test_peak_flops_by_device_name(monkeypatch, name, tflops):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops(torch.device("cuda")) == (tflops * 1e12 if tflops else None)
    assert peak_flops(torch.device("cuda"), peak_tflops=100.0) == 100e12


def test_peak_flops_unknown_on_cpu_unless_given():
    assert peak_flops(torch.device("cpu")) is None
    assert peak_flops(torch.device("cpu"), peak_tflops=2.5) == 2.5e12
    assert list(PEAK_TFLOPS).index("H100 NVL") < list(PEAK_TFLOPS).index("H100")  # the specific name first


def test_throughput_metrics():
    throughput = Throughput(seconds=4.0, steps=8, pairs=1024, tokens=40_000, flops=600e12, processes=2)
    metrics = throughput.metrics(peak=100e12)
    assert metrics == {
        "perf/step_time_s": 0.5,
        "perf/samples_per_s": 256.0,
        "perf/samples_per_s_per_device": 128.0,
        "perf/tokens_per_s": 10_000.0,
        "perf/model_tflops_per_s_per_device": 75.0,
        "perf/mfu": 0.75,
    }
    assert "perf/mfu" not in throughput.metrics(peak=None)


# The device-side record


def test_interval_record_reads_the_mean_over_processes_and_the_first_non_finite_loss():
    """Two processes with equal values: the reduce (a stand-in for accelerate's, summing) doubles everything."""
    two_processes = SimpleNamespace(reduce=lambda tensor, reduction: tensor * 2, num_processes=2)
    record = IntervalRecord(max_steps=4, accumulation=2, device=torch.device("cpu"))
    losses = [[1.0, 3.0], [2.0, float("inf")], [float("nan"), 4.0]]
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    for step_losses in losses:
        for micro_step, value in enumerate(step_losses):
            record.add(micro_step, torch.tensor(value), mask, torch.tensor(20.0 + micro_step), flops=1.5e9)
        record.end_step()
    reading = record.read(two_processes)
    assert reading.losses[0] == [1.0, 3.0] and reading.losses[1][0] == 2.0 and reading.losses[1][1] == float("inf")
    assert reading.first_non_finite() == (1, float("inf"))
    assert reading.tokens == 2 * 6 * 5 and reading.logit_scale == 21.0
    assert reading.flops == pytest.approx(2 * 6 * 1.5e9, rel=1e-6)  # summed on the device in float32
    record.reset()
    for micro_step, value in enumerate([5.0, 6.0]):
        record.add(micro_step, torch.tensor(value), mask, torch.tensor(20.0), flops=1.0)
    record.end_step()
    reading = record.read(two_processes)
    assert reading.losses == [[5.0, 6.0]] and reading.mean_loss == 5.5 and reading.first_non_finite() is None
    assert reading.tokens == 2 * 2 * 5 and reading.flops == 2 * 2.0


def test_a_non_finite_loss_is_found_at_the_next_logging_step(tmp_path, monkeypatch, unimed_repo, tokenizer_dir):
    """No check waits for the device per step: a NaN in step 5 is found when step 6 logs, reported as step 5, and
    nothing was written from the weights that produced it (the checkpoint of step 4 is set aside)."""
    calls = []

    class NanInStep5(loss.InfoNCELoss):
        def forward(self, *args):
            calls.append(1)
            value = super().forward(*args)
            return value * float("nan") if len(calls) == 5 else value

    monkeypatch.setitem(loss.LOSSES, "nan-in-step-5", NanInStep5)
    config = demo_config(
        unimed_repo, tokenizer_dir, tmp_path, loss="nan-in-step-5", log_every=3, checkpoint_every=2, max_steps=9
    )
    match = (
        r"Loss is nan at step 5; stopping. Last good checkpoint: .*step-00000002; set aside as diverged: .*-00000004"
    )
    with pytest.raises(train_script.NonFiniteLossError, match=match):
        train_script.train(config)
    assert len(calls) == 6  # step 6 ran: the check is deferred to the read before step 6's checkpoint


@pytest.fixture(scope="module")
def unimed_repo(tmp_path_factory):
    return write_unimed_repo(tmp_path_factory.mktemp("unimed"))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tokenizer")
    tiny_tokenizer.save_pretrained(path)
    return path


def test_throughput_and_mfu_are_logged(tmp_path, unimed_repo, tokenizer_dir):
    config = demo_config(unimed_repo, tokenizer_dir, tmp_path, max_steps=4, log_every=2, peak_tflops=0.5)
    train_script.train(config)
    samples, tokens = scalars(tmp_path, "perf/samples_per_s"), scalars(tmp_path, "perf/tokens_per_s")
    mfu, tflops = scalars(tmp_path, "perf/mfu"), scalars(tmp_path, "perf/model_tflops_per_s_per_device")
    assert len(samples) == len(mfu) == 2 and all(value > 0 for value in samples + tokens + mfu)
    assert mfu == [pytest.approx(rate / 0.5) for rate in tflops]
    assert 0 <= scalars(tmp_path, "perf/data_wait_fraction")[0] < 1


# No host synchronisation in a step


def test_training_steps_do_not_wait_for_the_device(tmp_path, unimed_repo, tokenizer_dir):
    """Profiled on the CPU (where nothing waits, but the calls that wait on a GPU show): between two logging steps,
    a step makes no synchronising call; a logging step makes one, the interval read. Inside the optimizer step,
    CPU AdamW reads its step counts with `item()`; those are host tensors on a CPU, and on CUDA train.py's fused
    AdamW keeps them on the device (bench/gpu_check.sh profiles the same steps there). The first step includes the
    setup and the last the final checkpoint; the data is decoded in a worker, as in training."""
    config = demo_config(
        unimed_repo, tokenizer_dir, tmp_path, max_steps=8, log_every=3, checkpoint_every=100, num_workers=1
    )
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        train_script.train(config)
    per_step = synchronising_calls_per_step(profile.events())
    assert len(per_step) == 8
    assert [calls["IntervalRecord.read"] for calls in per_step] == [0, 0, 1, 0, 0, 1, 0, 1]
    assert unexpected_waits(per_step, log_every=3, device_type="cpu") == {}


# JPEG decoding on the training device


def jpeg_bytes(seed: int, size: tuple[int, int], mode: str = "RGB", **save_options) -> bytes:
    """A smooth image (like a scan, unlike noise) saved as a JPEG, or in the format `save_options` name."""
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "CMYK": 4}[mode]
    coarse = rng.integers(0, 256, (size[1] // 8 + 1, size[0] // 8 + 1, channels), dtype=np.uint8)
    image = Image.fromarray(coarse.squeeze(-1) if mode == "L" else coarse, mode).resize(size, Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, save_options.pop("format", "JPEG"), **save_options)
    return buffer.getvalue()


IMAGES = {  # key: (bytes, decoded on the device)
    "rgb": (jpeg_bytes(0, (97, 64)), True),
    "gray": (jpeg_bytes(1, (60, 88), "L"), True),
    "rgb-444": (jpeg_bytes(2, (70, 70), subsampling=0, quality=95), True),
    "png": (jpeg_bytes(3, (80, 50), format="PNG"), False),
    "progressive": (jpeg_bytes(4, (64, 90), progressive=True), False),
    "cmyk": (jpeg_bytes(5, (66, 66), "CMYK"), False),
    "truncated": (jpeg_bytes(6, (64, 64))[:-40], False),  # skipped as bad_image, as on the CPU path
}


def test_device_decodable_jpegs_are_recognised_from_their_header():
    for key, (data, on_device) in IMAGES.items():
        assert (device_decodable_size(data) is not None) == on_device, key
    assert device_decodable_size(IMAGES["rgb"][0]) == (97, 64)
    assert device_decodable_size(b"\xff\xd8 not a jpeg \xff\xd9") is None


def test_libjpeg_turbo_decoding_equals_pil():
    """The CPU decode of the device path is PIL's, bit for bit (the same libjpeg-turbo)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    for key in ("rgb", "gray", "rgb-444"):
        data = IMAGES[key][0]
        decoded = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        expected = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(decoded, expected), key


def test_decode_crop_resize_is_the_cpu_transform_within_one_level():
    """Same crop box as `train_transform` (drawn from the same generator), resized by torchvision rather than PIL."""
    for key in ("rgb", "gray", "rgb-444"):
        data = IMAGES[key][0]
        image = Image.open(io.BytesIO(data))
        expected = train_transform(image, 32, random.Random(7))
        box = random_resized_crop_box(*image.size, random.Random(7))
        jpeg = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        (decoded,) = decode_crop_resize([jpeg], [box], 32, torch.device("cpu"))
        difference = (decoded.int() - expected.int()).abs()
        assert decoded.dtype == torch.uint8 and decoded.shape == (3, 32, 32)
        assert difference.max() <= 1 and difference.float().mean() < 0.2, key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG decoding needs a CUDA GPU")
def test_nvjpeg_decoding_matches_the_cpu_decode():
    jpegs = [torch.frombuffer(bytearray(IMAGES[key][0]), dtype=torch.uint8) for key in ("rgb", "gray", "rgb-444")]
    boxes = [(0, 0, 60, 60), (3, 5, 50, 70), (1, 1, 64, 64)]
    on_cpu = decode_crop_resize(jpegs, boxes, 32, torch.device("cpu"))
    on_gpu = decode_crop_resize(jpegs, boxes, 32, torch.device("cuda"))
    for cpu, gpu in zip(on_cpu, on_gpu, strict=True):
        difference = (cpu.int() - gpu.cpu().int()).abs()
        # nvJPEG upsamples chroma and inverts the DCT its own way; a wrong box, channel order or size is far off.
        assert difference.max() <= 8 and difference.float().mean() < 1.0


@pytest.fixture(scope="module")
def mixed_repo(tmp_path_factory):
    """Two shards of every kind of image, in the UniMed layout."""
    shards = [[sample(f"{key}-{shard}", image=IMAGES[key][0]) for key in IMAGES] for shard in range(2)]
    return write_repo(tmp_path_factory.mktemp("mixed"), {"xray": shards})


def loader_batches(repo, tokenizer, on_device: bool, state=None, stop=None):
    """(batches as the training loop receives them, the loader's state after `stop` batches or its skip counts)."""
    dataset = load_unimed(str(repo), seed=3, image_size=32)
    collate_fn = UniMedCollator(tokenizer)
    if on_device:
        dataset, collate_fn = DeviceDecodeStream(dataset), DeviceDecodeCollator(collate_fn)
    loader = unimed_dataloader(dataset, batch_size=3, num_workers=2, collate_fn=collate_fn)
    if state is not None:
        loader.load_state_dict(state)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == stop:
            return batches, loader.state_dict()
    return batches, dict(loader.skipped_samples)


def test_device_decode_stream_gives_the_cpu_paths_samples(mixed_repo, tiny_tokenizer):
    """Same captions in the same order, same skips, and the images within one level; the JPEGs the device takes are
    left undecoded by the workers, the others decoded there as before."""
    on_cpu, cpu_skipped = loader_batches(mixed_repo, tiny_tokenizer, on_device=False)
    on_device, device_skipped = loader_batches(mixed_repo, tiny_tokenizer, on_device=True)
    assert cpu_skipped == device_skipped == {"bad_image": 2}
    assert len(on_cpu) == len(on_device) == 4
    device_rows = 0
    for cpu, device in zip(on_cpu, on_device, strict=True):
        assert torch.equal(cpu["input_ids"], device["input_ids"])
        pixels = pixels_on_device(device, 32, torch.device("cpu"))
        assert pixels.shape == cpu["pixel_values"].shape and pixels.dtype == torch.uint8
        assert (pixels.int() - cpu["pixel_values"].int()).abs().max() <= 1
        device_rows += int(device["on_device"].sum())
        assert len(device["jpeg"]) == len(device["crop_box"]) == int(device["on_device"].sum())
    assert device_rows == 2 * sum(on_device for _, on_device in IMAGES.values())


def test_device_decode_stream_resumes_exactly(mixed_repo, tiny_tokenizer):
    full, _ = loader_batches(mixed_repo, tiny_tokenizer, on_device=True)
    head, state = loader_batches(mixed_repo, tiny_tokenizer, on_device=True, stop=1)
    tail, _ = loader_batches(mixed_repo, tiny_tokenizer, on_device=True, state=state)
    for expected, got in zip(full, head + tail, strict=True):
        assert torch.equal(expected["input_ids"], got["input_ids"])
        assert torch.equal(expected["crop_box"], got["crop_box"])
        assert all(torch.equal(a, b) for a, b in zip(expected["jpeg"], got["jpeg"], strict=True))


def test_train_decodes_on_the_device_when_asked(tmp_path, monkeypatch, tokenizer_dir):
    """train.py wired to the device path (here the CPU decodes, as nvJPEG would on a GPU): the JPEGs of every batch
    reach the device undecoded."""
    decoded = []

    def counting(jpegs, *args):
        decoded.append(len(jpegs))
        return decode_crop_resize(jpegs, *args)

    monkeypatch.setattr(device_decode, "decode_crop_resize", counting)
    shards = [
        [sample(f"{key}-{shard}-{copy}", image=IMAGES[key][0], captions=[key]) for key in ("rgb", "gray", "png")
         for copy in range(4)]
        for shard in range(2)
    ]  # fmt: skip
    jpeg_repo = write_repo(tmp_path / "jpeg", {"xray": shards})
    config = demo_config(jpeg_repo, tokenizer_dir, tmp_path / "run", max_steps=3, decode_on_device=True)
    assert (train_script.train(config) / "model.safetensors").is_file()
    assert len(scalars(tmp_path / "run", "train/loss")) == 3
    assert len(decoded) == 3 and sum(decoded) > 8  # 8 pairs a step, two thirds of them JPEGs


def test_a_jpeg_nothing_decodes_is_named(tiny_tokenizer):
    """Its header and end marker are intact, so the workers leave it to the device; its scan holds start-of-image
    markers, which libjpeg-turbo (and PIL, so the CPU path would skip it) refuse. The error names the sample."""
    data = bytearray(IMAGES["rgb"][0])
    scan = data.index(b"\xff\xda")  # start of scan: keep its header, corrupt the entropy-coded data after it
    start = scan + 2 + int.from_bytes(data[scan + 2 : scan + 4], "big")
    data[start:-2] = (b"\xff\xd8" * len(data))[: len(data) - start - 2]
    assert device_decodable_size(bytes(data)) == (97, 64)
    with pytest.raises(OSError):
        Image.open(io.BytesIO(bytes(data))).convert("RGB")
    samples = [{"jpeg": torch.frombuffer(data, dtype=torch.uint8), "crop_box": (0, 0, 50, 50), "caption": "x",
                "__key__": "broken-1"}]  # fmt: skip
    batch = DeviceDecodeCollator(UniMedCollator(tiny_tokenizer))(samples)
    with pytest.raises(RuntimeError, match=r"Cannot decode the JPEG of one of the samples \['broken-1'\]"):
        pixels_on_device(batch, 32, torch.device("cpu"))
