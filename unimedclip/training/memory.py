"""Peak memory of the training process, as train.py logs it and bench/bench_train.py reports it."""

import resource

import torch


def peak_memory_gib(device: torch.device) -> float:
    """Peak CUDA memory allocated on `device`, or on CPU the process's peak resident set size, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
