"""Two CPU processes (torchrun + gloo) give the loss and gradients of one process on the same global batch.

Run as a script under torchrun, this file is the worker: each rank takes its half of a fixed global batch, runs the
DDP-prepared training model (contrastive loss with features all-gathered with gradients), and rank 0 saves the
averaged loss and the DDP-averaged gradients.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY_VOCAB, tiny_config  # noqa: E402

from modeling_unimedclip import UniMedCLIPModel  # noqa: E402
from modeling_unimedclip.training.loss import ContrastiveTrainingModel  # noqa: E402

GLOBAL_BATCH = 8


def global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=generator)
    input_ids = torch.randint(5, len(TINY_VOCAB), (GLOBAL_BATCH, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[::2, 9:] = 0  # dynamic padding: some captions are shorter
    return pixel_values, input_ids, attention_mask


def training_model() -> ContrastiveTrainingModel:
    torch.manual_seed(0)
    model = ContrastiveTrainingModel(UniMedCLIPModel(tiny_config(logit_scale_init_value=3.0)))
    return model.eval()  # no dropout, so that both runs are deterministic


def worker(output: Path) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2, f"expected 2 processes, got {accelerator.num_processes}"
    model = accelerator.prepare(training_model())
    rows = slice(accelerator.process_index * GLOBAL_BATCH // 2, (accelerator.process_index + 1) * GLOBAL_BATCH // 2)
    loss, _ = model(*(tensor[rows] for tensor in global_batch()))
    loss.backward()
    mean_loss = accelerator.reduce(loss.detach(), "mean")
    if accelerator.is_main_process:
        gradients = {name: p.grad for name, p in accelerator.unwrap_model(model).named_parameters()}
        torch.save({"loss": mean_loss, "gradients": gradients}, output)
    accelerator.wait_for_everyone()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one_process_on_the_global_batch(tmp_path):
    output = tmp_path / "two_processes.pt"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        __file__,
        str(output),
    ]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    distributed = torch.load(output)

    model = training_model()
    loss, _ = model(*global_batch())
    loss.backward()
    torch.testing.assert_close(distributed["loss"], loss.detach(), rtol=0, atol=1e-6)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(distributed["gradients"][name], parameter.grad, rtol=1e-5, atol=2e-6, msg=name)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
