"""Atomic, resumable checkpoints: accelerate's state plus every process's data-stream position.

    <output_dir>/checkpoints/step-00001000/    accelerate's state: model.safetensors, optimizer.bin, scheduler.bin,
                                               random_states_<r>.pkl, [scaler.pt]; data_state_<r>.pt (one per
                                               process); trainer_state.json (step, world size); model/ (the
                                               transformers export: save_pretrained model + processor)
    <output_dir>/checkpoints/.tmp-step-.../    a checkpoint being written; renamed into place once every process wrote

A directory named `step-*` is therefore always complete; a crash or a failed write leaves only a `.tmp-*` directory,
which the next save removes.
"""

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator

CHECKPOINT_PREFIX = "step-"
logger = logging.getLogger(__name__)


class CheckpointWriteError(RuntimeError):
    """Some process could not write a checkpoint; the earlier checkpoints are intact."""


class DataStreamState:
    """Position in the training stream on this process: the loader's state and the data epoch."""

    def __init__(self, loader, dataset):
        self.loader, self.dataset, self.epoch = loader, dataset, 0

    def next_epoch(self) -> None:
        self.epoch += 1
        self.dataset.set_epoch(self.epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.dataset.set_epoch(self.epoch)
        self.loader.load_state_dict(state["loader"])


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(path for path in root.iterdir() if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX))


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    step: int,
    data_state: DataStreamState,
    keep: int,
    export: Callable[[Path], None],
) -> Path:
    """Write the checkpoint of `step` atomically on every process, then keep only the newest `keep`.

    `export(directory)` is called on every process to add files (the transformers export) before the rename.

    Raises CheckpointWriteError on every process if any process failed to write; earlier checkpoints are untouched.
    """
    final = checkpoint_dir(output_dir, step)
    temporary = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        for stale in final.parent.glob(".tmp-*"):
            shutil.rmtree(stale)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    error = None
    try:
        accelerator.save_state(str(temporary))
        torch.save(data_state.state_dict(), temporary / f"data_state_{accelerator.process_index}.pt")
        export(temporary)
        if accelerator.is_main_process:
            state = {"step": step, "world_size": accelerator.num_processes}
            (temporary / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
    except OSError as caught:
        error = caught
    # Every process must agree before the rename, or a partial checkpoint could become the latest one.
    failures = accelerator.reduce(torch.tensor(int(error is not None), device=accelerator.device), "sum")
    if failures.item():
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
        raise CheckpointWriteError(
            f"Writing the checkpoint of step {step} failed on {failures.item()} process(es)"
            + (f" ({error})" if error else "")
            + "; the previous checkpoints are intact."
        ) from error
    if accelerator.is_main_process:
        os.replace(temporary, final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(resume: str, output_dir: str | Path) -> Path:
    """'latest' -> the newest complete checkpoint of `output_dir`; otherwise the given directory."""
    if resume != "latest":
        return Path(resume)
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        raise FileNotFoundError(f"--resume latest: no checkpoint under {Path(output_dir) / 'checkpoints'}.")
    return checkpoints[-1]


def load_checkpoint(accelerator: Accelerator, path: Path, data_state: DataStreamState) -> int:
    """Restore model, optimizer, scheduler, RNG and data position; returns the step to continue from."""
    state = json.loads((path / "trainer_state.json").read_text())
    if state["world_size"] != accelerator.num_processes:
        raise ValueError(
            f"{path} was written by {state['world_size']} processes and this run has {accelerator.num_processes}: "
            "the data stream is split per process, so resume with the same number of processes."
        )
    accelerator.load_state(str(path))
    data_state.load_state_dict(torch.load(path / f"data_state_{accelerator.process_index}.pt", weights_only=False))
    logger.info(f"Resumed from {path} at step {state['step']}.")
    return state["step"]
