"""Atomic, resumable checkpoints: accelerate's state plus every process's data-stream position.

    <output_dir>/checkpoints/step-00001000/    accelerate's state: model.safetensors, optimizer.bin, scheduler.bin,
                                               random_states_<r>.pkl, [scaler.pt]; data_state_<r>.pt (one per
                                               process); trainer_state.json (step, world size); model/ (the
                                               transformers export: save_pretrained model + processor)
    <output_dir>/checkpoints/.tmp-step-.../    a checkpoint being written; renamed into place once every process wrote
    <output_dir>/checkpoints/diverged-step-.../  weights that led to a non-finite loss: kept, never resumed

A directory named `step-*` is therefore always complete and its weights finite; a crash or a failed write (a full
disk included) leaves only a `.tmp-*` directory, which the failed write or the next save removes. Checkpoints load
as data only (`weights_only=True`): nothing in a checkpoint directory can run code on resume.
"""

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from safetensors import SafetensorError

from .config import ConfigurationError

CHECKPOINT_PREFIX = "step-"
DIVERGED_PREFIX = "diverged-"
# What a write that runs out of disk raises: OSError from Python's I/O, RuntimeError from `torch.save`'s C++ writer,
# SafetensorError from `save_pretrained` (each seen on a full filesystem in tests/test_train.py).
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)
logger = logging.getLogger(__name__)


class CheckpointWriteError(RuntimeError):
    """Some process could not write a checkpoint or the final model; what was written before is intact."""


class DivergedWeightsError(RuntimeError):
    """The weights hold non-finite values; they are not written as a checkpoint."""


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


def checkpoint_step(path: Path) -> int:
    return int(path.name.removeprefix(CHECKPOINT_PREFIX))


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(path for path in root.iterdir() if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX))


def write_atomically(accelerator: Accelerator, final: Path, write: Callable[[Path], None], what: str) -> None:
    """Have every process `write(directory)` into a temporary sibling of `final`, then rename it into place once all
    succeeded (replacing an earlier `final`). If any process fails, the temporary directory is removed, `final` is as
    it was, and every process raises CheckpointWriteError."""
    temporary = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        for stale in final.parent.glob(".tmp-*"):
            shutil.rmtree(stale)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    error = None
    try:
        write(temporary)
    except WRITE_ERRORS as caught:
        error = caught
    # Every process must agree before the rename, or a partial directory could take the place of a complete one.
    failures = accelerator.reduce(torch.tensor(int(error is not None), device=accelerator.device), "sum").item()
    if failures:
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)  # on a full disk, this frees the space it took
        detail = f" ({type(error).__name__}: {str(error).splitlines()[0]})" if error else ""
        raise CheckpointWriteError(
            f"Writing {what} failed on {failures} process(es){detail}; what was written before is intact."
        ) from error
    if accelerator.is_main_process:
        if final.exists():
            previous = final.with_name(f".old-{final.name}")
            os.replace(final, previous)
            os.replace(temporary, final)
            shutil.rmtree(previous)
        else:
            os.replace(temporary, final)
    accelerator.wait_for_everyone()


def check_finite_weights(accelerator: Accelerator, model: torch.nn.Module, step: int) -> None:
    """Raise DivergedWeightsError on every process if any process holds a non-finite parameter."""
    finite = all(torch.isfinite(parameter).all() for parameter in model.parameters())
    bad = accelerator.reduce(torch.tensor(int(not finite), device=accelerator.device), "sum").item()
    if bad:
        raise DivergedWeightsError(f"The weights after step {step} hold non-finite values; not writing them.")


class NonFiniteLossError(RuntimeError):
    pass


def stop_on_non_finite_loss(accelerator: Accelerator, output_dir: str | Path, bad_step: int, loss: float) -> None:
    """On every process, after a non-finite `loss` at optimizer step `bad_step` (counted from 1): set the checkpoints
    of the weights that gave it aside (from step `bad_step - 1` on) and raise NonFiniteLossError naming the last good
    checkpoint."""
    diverged = set_aside_diverged(output_dir, bad_step - 1) if accelerator.is_main_process else []
    accelerator.wait_for_everyone()
    latest = list_checkpoints(output_dir)
    raise NonFiniteLossError(
        f"Loss is {loss} at step {bad_step}; stopping. Last good checkpoint: {latest[-1] if latest else 'none'}"
        + (f"; set aside as diverged: {', '.join(d.name for d in diverged)}" if diverged else "")
        + "."
    )


def set_aside_diverged(output_dir: str | Path, first_bad_step: int) -> list[Path]:
    """Rename the checkpoints from `first_bad_step` on to `diverged-step-*`: their weights led to a non-finite loss,
    so `--resume latest` must not pick them, but they are kept for inspection. Returns the new paths."""
    moved = []
    for path in list_checkpoints(output_dir):
        if checkpoint_step(path) >= first_bad_step:
            target = path.with_name(DIVERGED_PREFIX + path.name)
            os.replace(path, target)
            moved.append(target)
    return moved


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    step: int,
    data_state: DataStreamState,
    keep: int,
    export: Callable[[Path], None],
    protected: set[Path] = frozenset(),
) -> Path:
    """Write the checkpoint of `step` atomically on every process, then keep only the newest `keep` (and the
    `protected` ones, such as those still queued for upload).

    `export(directory)` is called on every process to add files (the transformers export) before the rename.
    Raises CheckpointWriteError on every process if any process failed to write; earlier checkpoints are untouched.
    """
    final = checkpoint_dir(output_dir, step)

    def write(directory: Path) -> None:
        accelerator.save_state(str(directory))
        torch.save(data_state.state_dict(), directory / f"data_state_{accelerator.process_index}.pt")
        export(directory)
        if accelerator.is_main_process:
            state = {"step": step, "world_size": accelerator.num_processes}
            (directory / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")

    write_atomically(accelerator, final, write, f"the checkpoint of step {step}")
    if accelerator.is_main_process:
        for old in list_checkpoints(output_dir)[:-keep]:
            if old not in protected:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def check_resume(config: dict[str, Any], output_dir: str | Path, resume: str | None, resumable: set[str]) -> None:
    """Before a run sets anything up: a resumed run's options (`config`, as saved in `<output_dir>/config.yaml`) must
    agree with the saved ones except for the `resumable` fields, and its checkpoint must exist; a new run must not
    write over checkpoints. Raises ConfigurationError naming what is wrong."""
    saved = Path(output_dir) / "config.yaml"
    if resume and saved.is_file():
        previous = yaml.safe_load(saved.read_text())
        changed = {
            key: (previous.get(key), value)
            for key, value in config.items()
            if key not in resumable and previous.get(key) != value
        }
        if changed:
            raise ConfigurationError(
                f"--resume continues the run in {output_dir} but these options changed: {changed}"
            )
    elif not resume and list_checkpoints(output_dir):
        raise ConfigurationError(f"{output_dir} already has checkpoints: pass --resume latest or a new --output-dir.")
    if resume:
        try:
            resolve_resume(resume, output_dir)
        except (FileNotFoundError, FileExistsError) as error:
            raise ConfigurationError(str(error)) from None


def resolve_resume(resume: str, output_dir: str | Path) -> Path:
    """'latest' -> the newest complete checkpoint of `output_dir`; otherwise the given directory, which must be the
    newest: continuing from an older one would overwrite the newer ones as training reaches their steps, so that is
    refused (move the newer ones aside first, e.g. to `diverged-step-*`)."""
    checkpoints = list_checkpoints(output_dir)
    if resume == "latest":
        if not checkpoints:
            raise FileNotFoundError(f"--resume latest: no checkpoint under {Path(output_dir) / 'checkpoints'}.")
        return checkpoints[-1]
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"--resume {resume}: not a checkpoint directory (no trainer_state.json).")
    newer = [
        c
        for c in checkpoints
        if path.name.startswith(CHECKPOINT_PREFIX) and checkpoint_step(c) > checkpoint_step(path)
    ]
    if newer:
        raise FileExistsError(
            f"--resume {resume}: {len(newer)} newer checkpoint(s) exist ({', '.join(c.name for c in newer)}), which "
            "this run would overwrite. Resume from the latest, or move the newer ones out of checkpoints/ (for "
            f"example renamed to {DIVERGED_PREFIX}<name>) to continue from this one."
        )
    return path


def load_checkpoint(accelerator: Accelerator, path: Path, data_state: DataStreamState) -> int:
    """Restore model, optimizer, scheduler, RNG and data position; returns the step to continue from."""
    state = json.loads((path / "trainer_state.json").read_text())
    if state["world_size"] != accelerator.num_processes:
        raise ValueError(
            f"{path} was written by {state['world_size']} processes and this run has {accelerator.num_processes}: "
            "the data stream is split per process, so resume with the same number of processes."
        )
    accelerator.load_state(str(path))
    data_state.load_state_dict(torch.load(path / f"data_state_{accelerator.process_index}.pt", weights_only=True))
    logger.info(f"Resumed from {path} at step {state['step']}.")
    return state["step"]
