"""Model FLOPs of a training step, the peak FLOP rates of common accelerators, and model FLOPs utilisation (MFU).

MFU is the rate of model FLOPs (the matrix multiplications a training step needs in exact arithmetic: no
recomputation under activation checkpointing, no savings from masks) over the devices' peak rate, as in PaLM
(arXiv 2204.02311, appendix B). Elementwise work (normalisation, activations, softmax, the optimizer) is not counted.
"""

import re
from dataclasses import dataclass

import torch

from modeling_unimedclip import UniMedCLIPConfig

# Dense (no sparsity) bf16 tensor-core peak of one device in TFLOP/s, from the vendors' data sheets; the first
# pattern found in `torch.cuda.get_device_name()` wins, so more specific names come first.
PEAK_TFLOPS: dict[str, float] = {
    "GB200": 2500.0,
    "B200": 2250.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,  # SXM; also H100 80GB HBM3
    "H200": 989.0,
    "H800": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10": 125.0,
    "MI300X": 1307.0,
    "MI250X": 383.0,
}


def _matmul(forward: float, input_grad: bool, weight_grad: bool) -> float:
    """FLOPs of a matrix product in a training step: its forward, plus one product of the same size for the
    gradient of each operand that needs one."""
    return forward * (1 + input_grad + weight_grad)


def training_flops_per_pair(
    config: UniMedCLIPConfig,
    text_length: int,
    negatives: int,
    train_image: bool = True,
    train_text: bool = True,
) -> float:
    """Model FLOPs of one image-text pair in a training step (forward and backward).

    With an image of side s in patches of side p, n = (s / p)^2 + 1 image tokens, ViT width d, MLP width f and l
    layers; captions padded to `text_length` L, BERT width h, MLP width g and m layers; text head width k,
    embedding width e and N = `negatives` (the pairs the loss scores each pair against: micro-batch x processes),
    the forward pass costs (a product of (a x b) and (b x c) matrices is 2abc FLOPs)

        image:  2 (n - 1) 3p^2 d                    patch embedding
                + l (8 n d^2 + 4 n d f + 4 n^2 d)    Q, K, V and output projections; MLP; scores and weighted values
                + 2 d e                              projection of the class token
        text:   m (8 L h^2 + 4 L h g + 4 L^2 h)      the same per BERT layer (embeddings are look-ups)
                + 2 h k + 2 k e                      the text head on [CLS]
        loss:   4 N e                                the pair's row of both logit matrices

    and the backward pass computes one product of the same size for the gradient of each operand that needs one:
    3x the forward for a trained layer fed by trained layers, 2x for the patch embedding (the pixels need no
    gradient) and for the first layer of the text head after a frozen BERT, 1x for a frozen tower
    (`train_image=False`: image tower and its projection frozen; `train_text=False`: BERT frozen, its head trained).
    The loss's products (under 0.1 % of the total at the recipe's sizes) count 3x in every case.
    """
    vision, text = config.vision_config, config.text_config
    d, f, layers, p = vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers, vision.patch_size
    patches = (vision.image_size // p) ** 2
    n = patches + 1
    h, g, text_layers, L = text.hidden_size, text.intermediate_size, text.num_hidden_layers, text_length
    k, e = config.text_head_hidden_size, config.projection_dim

    image = _matmul(2 * patches * 3 * p * p * d, input_grad=False, weight_grad=train_image)
    image += layers * _matmul(8 * n * d * d + 4 * n * d * f + 4 * n * n * d, train_image, train_image)
    image += _matmul(2 * d * e, train_image, train_image)
    text = text_layers * _matmul(8 * L * h * h + 4 * L * h * g + 4 * L * L * h, train_text, train_text)
    text += _matmul(2 * h * k, input_grad=train_text, weight_grad=True) + _matmul(2 * k * e, True, True)
    loss = _matmul(4 * negatives * e, input_grad=True, weight_grad=True)
    return image + text + loss


def peak_flops(device: torch.device, peak_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one `device`: `peak_tflops` if given, else the `PEAK_TFLOPS` entry matching the CUDA device's
    name; None when unknown (CPUs, unlisted GPUs), and then MFU is not reported."""
    if peak_tflops is not None:
        return peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for pattern, tflops in PEAK_TFLOPS.items():
        if re.search(rf"\b{re.escape(pattern)}\b", name):
            return tflops * 1e12
    return None


@dataclass
class Throughput:
    """Work of an interval of training, over all processes, and what it makes per second."""

    seconds: float
    steps: int
    pairs: int
    tokens: int  # caption tokens, padding excluded
    flops: float  # model FLOPs (`training_flops_per_pair` at each micro-batch's padded caption length)
    processes: int

    def metrics(self, peak: float | None) -> dict[str, float]:
        """The `perf/` metrics train.py logs; `perf/mfu` (a fraction) when the peak FLOP/s of a device is known."""
        metrics = {
            "perf/step_time_s": self.seconds / self.steps,
            "perf/samples_per_s": self.pairs / self.seconds,
            "perf/samples_per_s_per_device": self.pairs / self.seconds / self.processes,
            "perf/tokens_per_s": self.tokens / self.seconds,
            "perf/model_tflops_per_s_per_device": self.flops / self.seconds / self.processes / 1e12,
        }
        if peak is not None:
            metrics["perf/mfu"] = self.flops / (self.seconds * self.processes * peak)
        return metrics
