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

The host never waits for the device inside a step: batches arrive pinned and are copied without blocking, losses and
counts stay on the device (unimedclip/training/interval.py) and are read once per logging interval, and before a
checkpoint, an evaluation or the final export. A non-finite loss therefore stops the run at the next of those (at most
`log_every` steps later), on every process, naming the step that produced it. Logged throughput: samples/s, caption
tokens/s, model TFLOP/s and MFU (unimedclip/training/throughput.py), and the share of the time spent waiting for data.
"""

import contextlib
import dataclasses
import functools
import logging
import math
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from unimedclip.data import EmptyEpochError, UniMedCollator, load_unimed, normalize_pixels, unimed_dataloader
from unimedclip.data.device_decode import DeviceDecodeCollator, DeviceDecodeStream, pixels_on_device
from unimedclip.release.model_card import model_card_for_directory
from unimedclip.training.checkpointing import (
    CheckpointWriteError,
    DataStreamState,
    DivergedWeightsError,
    NonFiniteLossError,
    check_finite_weights,
    check_resume,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
    stop_on_non_finite_loss,
    write_atomically,
)
from unimedclip.training.config import (
    RESUMABLE_CHANGES,
    ConfigurationError,
    TrainingConfig,
    check_launch,
    parse_args,
)
from unimedclip.training.interval import IntervalReading, IntervalRecord
from unimedclip.training.loss import ContrastiveTrainingModel, create_loss
from unimedclip.training.memory import peak_memory_gib
from unimedclip.training.model import build_model_and_processor
from unimedclip.training.optim import build_optimizer, build_scheduler
from unimedclip.training.throughput import Throughput, peak_flops, training_flops_per_pair
from unimedclip.training.uploads import BackgroundPusher
from unimedclip.training.zero_shot_hook import ZeroShotHook

MAX_LOGIT_SCALE = math.log(100)
logger = logging.getLogger("train")


def check_run_config(config: TrainingConfig) -> None:
    """Fields a run needs beyond `TrainingConfig.validate`, and a resumed run's agreement with the saved config."""
    missing = [name for name in ("data", "output_dir") if not getattr(config, name)]
    if missing:
        raise ConfigurationError(f"Training needs {' and '.join('--' + m.replace('_', '-') for m in missing)}.")
    check_resume(dataclasses.asdict(config), config.output_dir, config.resume, RESUMABLE_CHANGES)


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
    check_launch(accelerator)
    world_size = accelerator.num_processes
    accumulation = config.accumulation_steps(world_size)
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
    loss_fn = create_loss(config.loss, rank=accelerator.process_index, world_size=world_size)
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
        world_size=world_size,
    )
    collate_fn = UniMedCollator(processor.tokenizer)
    if config.decode_on_device:  # the workers parse JPEG headers and draw the crops; the GPU decodes
        dataset, collate_fn = DeviceDecodeStream(dataset), DeviceDecodeCollator(collate_fn)
    # Its own generator: a new iterator draws a seed from it, not from the global RNG the checkpoints restore.
    loader = unimed_dataloader(
        dataset,
        config.micro_batch_size,
        config.num_workers,
        collate_fn,
        generator=torch.Generator().manual_seed(config.seed + accelerator.process_index),
        pin_memory=accelerator.device.type == "cuda",
    )
    data_state = DataStreamState(loader, dataset)
    image_processor = processor.image_processor
    pixel_mean = torch.tensor(image_processor.image_mean, device=accelerator.device)
    pixel_std = torch.tensor(image_processor.image_std, device=accelerator.device)

    # Throughput: model FLOPs at each micro-batch's caption length, against the devices' peak.
    flops_per_pair = functools.partial(
        training_flops_per_pair,
        unwrapped.config,
        negatives=config.micro_batch_size * world_size,
        train_image=not config.lock_image,
        train_text=not config.lock_text,
    )
    peak = peak_flops(accelerator.device, config.peak_tflops)
    record = IntervalRecord(config.log_every, accumulation, accelerator.device)

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

    def stop_if_diverged(reading: IntervalReading, first_step: int) -> None:
        if (diverged_at := reading.first_non_finite()) is None:
            return
        offset, loss = diverged_at
        bad_step = first_step + offset + 1
        stop_on_non_finite_loss(accelerator, output_dir, bad_step, loss)

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
        f"{world_size} process(es) x {config.micro_batch_size} pairs x {accumulation} accumulation "
        f"= global batch {config.batch_size}; steps {step} -> {config.total_steps}"
    )
    batches = micro_batches()
    progress = tqdm(initial=step, total=config.total_steps, disable=not accelerator.is_main_process, unit="step")
    interval_start, interval_first_step, data_wait = time.perf_counter(), step, 0.0
    try:
        while step < config.total_steps:
            for micro_step in range(accumulation):
                waited = time.perf_counter()
                batch = next(batches)
                data_wait += time.perf_counter() - waited
                # Pinned batches copied without waiting: the step queues its work and moves on.
                pixel_values = pixels_on_device(batch, image_size, accelerator.device)
                pixel_values = normalize_pixels(pixel_values, pixel_mean, pixel_std)
                input_ids = batch["input_ids"].to(accelerator.device, non_blocking=True)
                attention_mask = batch["attention_mask"].to(accelerator.device, non_blocking=True)
                last = micro_step == accumulation - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(training_model):
                    loss, logit_scale = training_model(pixel_values, input_ids, attention_mask)
                    accelerator.backward(loss / accumulation)
                flops = flops_per_pair(text_length=input_ids.shape[1]) * len(input_ids)
                record.add(micro_step, loss, attention_mask, logit_scale, flops)
            lr = scheduler.get_last_lr()[0]  # the rate of this step; `scheduler.step()` moves to the next one
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                unwrapped.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            step += 1
            record.end_step()
            progress.update()

            logging_now = step % config.log_every == 0 or step == config.total_steps
            evaluating = bool(config.eval_every) and step % config.eval_every == 0
            checkpointing = step % config.checkpoint_every == 0 or step == config.total_steps
            if logging_now or evaluating or checkpointing:
                reading = record.read(accelerator)  # the one host synchronisation
                stop_if_diverged(reading, interval_first_step)
            if logging_now:
                seconds = time.perf_counter() - interval_start
                pairs = record.steps * config.batch_size
                throughput = Throughput(seconds, record.steps, pairs, reading.tokens, reading.flops, world_size)
                metrics = {
                    "train/loss": reading.mean_loss,
                    "train/lr": lr,
                    "train/logit_scale": reading.logit_scale,
                    **throughput.metrics(peak),
                    "perf/data_wait_fraction": data_wait / seconds,
                    "perf/peak_memory_gib": peak_memory_gib(accelerator.device),
                    **{f"data/skipped_{reason}": count for reason, count in loader.skipped_samples.items()},
                }
                accelerator.log(metrics, step=step)
                progress.set_postfix(loss=f"{metrics['train/loss']:.4f}", lr=f"{metrics['train/lr']:.2e}")
                record.reset()
                interval_start, interval_first_step, data_wait = time.perf_counter(), step, 0.0
            paused = time.perf_counter()
            if evaluating:
                if eval_hook is not None:
                    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
                    dtype = dtypes.get(accelerator.mixed_precision, torch.float32)
                    accelerator.log(eval_hook(unwrapped, processor, dtype), step=step)
                accelerator.wait_for_everyone()
            if checkpointing:
                checkpoint()
            interval_start += time.perf_counter() - paused  # evaluating and checkpointing is not training time

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
