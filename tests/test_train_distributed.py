"""Two CPU processes (torchrun + gloo): the loss and gradients of one process on the same global batch, and train.py
itself trained, checkpointed and resumed on two processes.

Run as a script under torchrun, this file is the worker of the first test: each rank takes its half of a fixed global
batch, runs the DDP-prepared training model (contrastive loss with features all-gathered with gradients), and rank 0
saves the averaged loss and the DDP-averaged gradients.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModel

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY_VOCAB, tiny_config  # noqa: E402

from modeling_unimedclip import UniMedCLIPModel  # noqa: E402
from unimedclip.training.loss import ContrastiveTrainingModel, create_loss  # noqa: E402

GLOBAL_BATCH = 8


def global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=generator)
    input_ids = torch.randint(5, len(TINY_VOCAB), (GLOBAL_BATCH, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[::2, 9:] = 0  # dynamic padding: some captions are shorter
    return pixel_values, input_ids, attention_mask


def training_model(rank: int = 0, world_size: int = 1) -> ContrastiveTrainingModel:
    torch.manual_seed(0)
    loss = create_loss("infonce", rank=rank, world_size=world_size)
    model = ContrastiveTrainingModel(UniMedCLIPModel(tiny_config(logit_scale_init_value=3.0)), loss)
    return model.eval()  # no dropout, so that both runs are deterministic


def worker(output: Path) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2, f"expected 2 processes, got {accelerator.num_processes}"
    model = accelerator.prepare(training_model(accelerator.process_index, accelerator.num_processes))
    rows = slice(accelerator.process_index * GLOBAL_BATCH // 2, (accelerator.process_index + 1) * GLOBAL_BATCH // 2)
    loss, _ = model(*(tensor[rows] for tensor in global_batch()))
    loss.backward()
    mean_loss = accelerator.reduce(loss.detach(), "mean")
    if accelerator.is_main_process:
        gradients = {name: p.grad for name, p in accelerator.unwrap_model(model).named_parameters()}
        torch.save({"loss": mean_loss, "gradients": gradients}, output)
    # Exiting with the process group alive can abort a rank ("terminate called without an active exception").
    accelerator.end_training()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*arguments: str) -> subprocess.CompletedProcess:
    """`ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 --master_port <free> ARGUMENTS`, which must succeed."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        *arguments,
    ]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_processes_match_one_process_on_the_global_batch(tmp_path):
    output = tmp_path / "two_processes.pt"
    torchrun(__file__, str(output))
    distributed = torch.load(output)

    model = training_model()
    loss, _ = model(*global_batch())
    loss.backward()
    torch.testing.assert_close(distributed["loss"], loss.detach(), rtol=0, atol=1e-6)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(distributed["gradients"][name], parameter.grad, rtol=1e-5, atol=2e-6, msg=name)


def test_train_script_on_two_processes_checkpoints_and_resumes_bit_identical(tmp_path, tiny_tokenizer):
    """train.py under torchrun: 2 processes x 4 pairs x 2 accumulation = batch 16, 6 steps (one pass over each
    rank's 32 pairs is 4 steps), checkpoints at 3 and 6. Then the run is cut back to what a kill between steps 3 and
    6 leaves, resumed on 2 processes, and must end on the weights of the uninterrupted run."""
    from test_train import write_unimed_repo  # here, not at the top: the torchrun worker above needs none of it

    data = write_unimed_repo(tmp_path / "unimed", shards=2)  # one shard of each modality per rank
    tiny_tokenizer.save_pretrained(tmp_path / "tokenizer")
    output_dir = tmp_path / "run"
    command = [str(Path(__file__).parents[1] / "train.py"), "--config", "demo", "--data", str(data)]
    command += ["--tokenizer", str(tmp_path / "tokenizer"), "--output-dir", str(output_dir), "--image-size", "32"]
    command += ["--batch-size", "16", "--micro-batch-size", "4", "--max-steps", "6", "--warmup-steps", "2"]
    command += ["--checkpoint-every", "3", "--report-to", "none"]

    result = torchrun(*command)
    assert "2 process(es) x 4 pairs x 2 accumulation = global batch 16; steps 0 -> 6" in result.stderr
    checkpoints = output_dir / "checkpoints"
    for step in ("step-00000003", "step-00000006"):
        assert json.loads((checkpoints / step / "trainer_state.json").read_text())["world_size"] == 2
        per_process = sorted(path.name for path in (checkpoints / step).glob("*_state*_[0-9]*"))
        assert per_process == ["data_state_0.pt", "data_state_1.pt", "random_states_0.pkl", "random_states_1.pkl"]
    uninterrupted = load_file(output_dir / "final" / "model.safetensors")
    at_step_3 = load_file(checkpoints / "step-00000003" / "model" / "model.safetensors")
    assert not all(torch.equal(at_step_3[name], value) for name, value in uninterrupted.items())

    shutil.rmtree(checkpoints / "step-00000006")
    shutil.rmtree(output_dir / "final")
    result = torchrun(*command, "--resume", "latest")
    assert "2 process(es) x 4 pairs x 2 accumulation = global batch 16; steps 3 -> 6" in result.stderr
    assert json.loads((checkpoints / "step-00000006" / "trainer_state.json").read_text()) == {
        "step": 6,
        "world_size": 2,
    }
    resumed = AutoModel.from_pretrained(output_dir / "final").state_dict()
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(uninterrupted[name], value) for name, value in resumed.items())


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
