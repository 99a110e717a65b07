"""Train UniMed-CLIP on the UniMed stream with the original recipe (REFERENCE section 4), natively in transformers.

    accelerate launch train.py --config b16 --data ORG/UniMed --output-dir runs/b16
    accelerate launch --config_file configs/accelerate/fsdp2.yaml train.py --config l14-336-large \
        --data DIR --output-dir runs/l14 --activation-checkpointing
    python train.py --config demo --tokenizer DIR --data DIR --output-dir runs/demo          # tiny, CPU, minutes
    ... --resume latest                                                                      # continue the run
    python train.py --config b16 --print-config > my.yaml; python train.py --config my.yaml ...

Batches. `batch_size` is the global batch: pairs per optimizer step, summed over processes and accumulated
micro-batches (`batch_size = micro_batch_size x processes x accumulation steps`; the accumulation steps follow).
Contrastive negatives are the pairs of one micro-step on all processes (`micro_batch_size x processes`): they do not
span accumulated micro-batches, and the step's gradient is the mean of its micro-steps' gradients. With no
accumulation (the original: 128 x 16 GPUs) negatives are the whole global batch, and the loss and gradients equal
those of one process on that batch (see unimedclip/training/loss.py).

Checkpoints (`<output-dir>/checkpoints/step-N/`, atomic, newest `keep_checkpoints` kept) hold accelerate's state, every
process's data-stream position and a transformers export in `model/`. The final model, its processor and a model card
draft go to `<output-dir>/final/`.
"""

import contextlib
import dataclasses
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from unimedclip.data import EmptyEpochError, UniMedCollator, load_unimed, normalize_pixels, unimed_dataloader
from unimedclip.release.model_card import model_card_for_directory
from unimedclip.training.checkpointing import (
    CheckpointWriteError,
    DataStreamState,
    DivergedWeightsError,
    check_finite_weights,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
    set_aside_diverged,
    write_atomically,
)
from unimedclip.training.config import RESUMABLE_CHANGES, ConfigurationError, TrainingConfig, parse_args
from unimedclip.training.loss import ContrastiveTrainingModel, create_loss
from unimedclip.training.memory import peak_memory_gib
from unimedclip.training.model import build_model_and_processor
from unimedclip.training.optim import build_optimizer, build_scheduler
from unimedclip.training.uploads import BackgroundPusher
from unimedclip.training.zero_shot_hook import ZeroShotHook

MAX_LOGIT_SCALE = math.log(100)
logger = logging.getLogger("train")


class NonFiniteLossError(RuntimeError):
    pass


def check_run_config(config: TrainingConfig) -> None:
    """Fields a run needs beyond `TrainingConfig.validate`, and a resumed run's agreement with the saved config."""
    missing = [name for name in ("data", "output_dir") if not getattr(config, name)]
    if missing:
        raise ConfigurationError(f"Training needs {' and '.join('--' + m.replace('_', '-') for m in missing)}.")
    saved = Path(config.output_dir) / "config.yaml"
    if config.resume and saved.is_file():
        previous = yaml.safe_load(saved.read_text())
        changed = {
            key: (previous.get(key), value)
            for key, value in dataclasses.asdict(config).items()
            if key not in RESUMABLE_CHANGES and previous.get(key) != value
        }
        if changed:
            raise ConfigurationError(
                f"--resume continues the run in {config.output_dir} but these options changed: {changed}"
            )
    elif not config.resume and list_checkpoints(config.output_dir):
        raise ConfigurationError(
            f"{config.output_dir} already has checkpoints: pass --resume latest or a new --output-dir."
        )
    if config.resume:  # before the model and the data are set up, which takes minutes at full size
        try:
            resolve_resume(config.resume, config.output_dir)
        except (FileNotFoundError, FileExistsError) as error:
            raise ConfigurationError(str(error)) from None


def train(config: TrainingConfig, pusher: BackgroundPusher | None = None) -> Path:
    """Run (or resume) training; returns the directory of the final model.

    `pusher` uploads checkpoints when `push_to_hub` is set; default: a `BackgroundPusher` with the real Hub API.
    """
    check_run_config(config)
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,  # None: as `accelerate launch` or `accelerate config` set it
        log_with=config.trackers,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        step_scheduler_with_optimizer=False,
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        # torchrun without GPUs and without ACCELERATE_USE_CPU=1 would otherwise run independent trainings.
        raise ConfigurationError(
            f"Launched as {launched} processes but Accelerate runs {accelerator.num_processes}: on CPUs set "
            "ACCELERATE_USE_CPU=1 (or use `accelerate launch --cpu`)."
        )
    accumulation = config.accumulation_steps(accelerator.num_processes)
    if config.eval_every and accelerator.distributed_type == DistributedType.FSDP:
        raise ConfigurationError(
            "eval_every runs on the main process's full model, which FSDP shards; evaluate checkpoints."
        )
    run_eval = config.eval_every and accelerator.is_main_process
    eval_hook = ZeroShotHook(config.eval_data, config.eval_datasets) if run_eval else None
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(config.to_yaml())

    # Model, optimizer, schedule. Same initial weights everywhere, then a different dropout stream per process.
    set_seed(config.seed)
    model, processor = build_model_and_processor(config)
    if config.compile:
        model.vision_model.compile()
        model.text_model.compile()
    loss_fn = create_loss(config.loss, rank=accelerator.process_index, world_size=accelerator.num_processes)
    training_model = ContrastiveTrainingModel(model, loss_fn)
    optimizer = build_optimizer(training_model, config, accelerator.device)
    scheduler = build_scheduler(optimizer, config)
    training_model, optimizer, scheduler = accelerator.prepare(training_model, optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(training_model).model
    set_seed(config.seed + accelerator.process_index)

    # Data: the stream is already split by process, so the loader is deliberately not `prepare`d.
    image_size = model.config.vision_config.image_size
    dataset = load_unimed(
        config.data,
        modalities=config.modalities,
        seed=config.seed,
        image_size=image_size,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )
    # Its own generator: a new iterator draws a seed from it, not from the global RNG the checkpoints restore.
    loader = unimed_dataloader(
        dataset,
        config.micro_batch_size,
        config.num_workers,
        UniMedCollator(processor.tokenizer),
        generator=torch.Generator().manual_seed(config.seed + accelerator.process_index),
    )
    data_state = DataStreamState(loader, dataset)
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std

    step = 0
    if config.resume:
        step = load_checkpoint(accelerator, resolve_resume(config.resume, output_dir), data_state)

    def micro_batches():
        while True:
            yield from loader
            data_state.next_epoch()

    def export_model(directory: Path) -> None:
        state_dict = accelerator.get_state_dict(training_model)  # a collective under FSDP: every process calls it
        if accelerator.is_main_process:
            weights = {key.removeprefix("model."): value for key, value in state_dict.items()}
            unwrapped.save_pretrained(directory, state_dict=weights)
            processor.save_pretrained(directory)

    def checkpoint() -> None:
        check_finite_weights(accelerator, training_model, step)
        uploading = pusher.pending_checkpoints() if pusher is not None else set()
        path = save_checkpoint(
            accelerator,
            output_dir,
            step,
            data_state,
            config.keep_checkpoints,
            lambda d: export_model(d / "model"),
            protected=uploading,
        )
        if pusher is not None:
            pusher.push(path / "model", f"Training checkpoint, step {step}")

    if not (config.push_to_hub and accelerator.is_main_process):
        pusher = None
    elif pusher is None:
        pusher = BackgroundPusher(config.push_to_hub)
    accelerator.init_trackers("unimed-clip", {k: str(v) for k, v in dataclasses.asdict(config).items()})
    logger.info(
        f"{accelerator.num_processes} process(es) x {config.micro_batch_size} pairs x {accumulation} accumulation "
        f"= global batch {config.batch_size}; steps {step} -> {config.total_steps}"
    )
    batches = micro_batches()
    progress = tqdm(initial=step, total=config.total_steps, disable=not accelerator.is_main_process, unit="step")
    interval_start, interval_steps, interval_loss = time.perf_counter(), 0, 0.0
    try:
        while step < config.total_steps:
            step_loss = 0.0
            for micro_step in range(accumulation):
                batch = next(batches)
                pixel_values = normalize_pixels(batch["pixel_values"].to(accelerator.device), mean, std)
                last = micro_step == accumulation - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(training_model):
                    loss, logit_scale = training_model(
                        pixel_values,
                        batch["input_ids"].to(accelerator.device),
                        batch["attention_mask"].to(accelerator.device),
                    )
                    global_loss = accelerator.reduce(loss.detach(), "mean").item()
                    if not math.isfinite(global_loss):
                        # The weights after `step` updates gave it: a checkpoint of them is no good to resume.
                        diverged = set_aside_diverged(output_dir, step) if accelerator.is_main_process else []
                        accelerator.wait_for_everyone()
                        latest = list_checkpoints(output_dir)
                        raise NonFiniteLossError(
                            f"Loss is {global_loss} at step {step + 1}; stopping. Last good checkpoint: "
                            f"{latest[-1] if latest else 'none'}"
                            + (f"; set aside as diverged: {', '.join(d.name for d in diverged)}" if diverged else "")
                            + "."
                        )
                    accelerator.backward(loss / accumulation)
                step_loss += global_loss / accumulation
            lr = scheduler.get_last_lr()[0]  # the rate of this step; `scheduler.step()` moves to the next one
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                unwrapped.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            step += 1
            progress.update()
            interval_steps, interval_loss = interval_steps + 1, interval_loss + step_loss

            if step % config.log_every == 0 or step == config.total_steps:
                seconds = (time.perf_counter() - interval_start) / interval_steps
                metrics = {
                    "train/loss": interval_loss / interval_steps,
                    "train/lr": lr,
                    "train/logit_scale": logit_scale.item(),
                    "perf/step_time_s": seconds,
                    "perf/samples_per_s": config.batch_size / seconds,
                    "perf/samples_per_s_per_device": config.batch_size / seconds / accelerator.num_processes,
                    "perf/peak_memory_gib": peak_memory_gib(accelerator.device),
                    **{f"data/skipped_{reason}": count for reason, count in loader.skipped_samples.items()},
                }
                accelerator.log(metrics, step=step)
                progress.set_postfix(loss=f"{metrics['train/loss']:.4f}", lr=f"{metrics['train/lr']:.2e}")
                interval_start, interval_steps, interval_loss = time.perf_counter(), 0, 0.0
            if config.eval_every and step % config.eval_every == 0:
                if eval_hook is not None:
                    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
                    dtype = dtypes.get(accelerator.mixed_precision, torch.float32)
                    accelerator.log(eval_hook(unwrapped, processor, dtype), step=step)
                accelerator.wait_for_everyone()
            if step % config.checkpoint_every == 0 or step == config.total_steps:
                checkpoint()

        def export_final(directory: Path) -> None:
            export_model(directory)
            if accelerator.is_main_process:
                card = model_card_for_directory(directory, **config.model_card_fields(accelerator.mixed_precision))
                card.save(directory / "README.md")

        final_dir = output_dir / "final"
        write_atomically(accelerator, final_dir, export_final, "the final model")
        if accelerator.is_main_process:
            logger.info(f"Samples skipped by the data stream: {dict(loader.skipped_samples) or 'none'}.")
            if pusher is not None:
                pusher.push(final_dir, "UniMed-CLIP, end of training")
        accelerator.wait_for_everyone()
        return final_dir
    finally:
        progress.close()
        accelerator.end_training()
        if pusher is not None:
            pusher.close()


def main(argv: list[str] | None = None) -> None:
    config, print_config = parse_args(argv)
    if print_config:
        print(config.to_yaml(), end="")
        return
    try:
        final_dir = train(config)
    except (
        ConfigurationError,
        NonFiniteLossError,
        DivergedWeightsError,
        CheckpointWriteError,
        EmptyEpochError,
    ) as error:
        sys.exit(f"train.py: error: {error}")
    print(f"Final model in {final_dir}")


if __name__ == "__main__":
    main()
