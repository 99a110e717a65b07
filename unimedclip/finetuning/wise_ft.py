"""Weight-space ensembles of the zero-shot and the fine-tuned classifier (WiSE-FT, Wortsman et al., CVPR 2022,
arXiv 2109.01903): `(1 - a) x zero-shot + a x fine-tuned` for every weight, with the mixing coefficient `a` chosen on
the validation split. Both models share the architecture, so the mix is one model of the same size; it usually keeps
most of the fine-tuned accuracy and more of the zero-shot model's robustness to shifted data."""

import math
from collections.abc import Callable

import torch


def interpolate(
    zero_shot: dict[str, torch.Tensor], fine_tuned: dict[str, torch.Tensor], coefficient: float
) -> dict[str, torch.Tensor]:
    """The state dict `(1 - coefficient) x zero_shot + coefficient x fine_tuned`. `torch.lerp` returns each end
    exactly at 0 and 1; tensors that are not floating point (none in the classifier) come from `fine_tuned`."""
    if zero_shot.keys() != fine_tuned.keys():
        raise ValueError(
            "WiSE-FT mixes two models of one architecture; their weights differ in "
            f"{sorted(zero_shot.keys() ^ fine_tuned.keys())}."
        )
    return {
        name: torch.lerp(zero_shot[name].to(tensor), tensor, coefficient) if tensor.is_floating_point() else tensor
        for name, tensor in fine_tuned.items()
    }


def choose_coefficient(coefficients: list[float], score: Callable[[float], float]) -> tuple[float, dict[float, float]]:
    """The coefficient with the best `score` (ties: the smallest, closest to the zero-shot model), and every
    coefficient's score. A NaN score (e.g. AUC on a split with one class) never wins."""
    scores = {coefficient: score(coefficient) for coefficient in sorted(set(coefficients))}
    valid = {coefficient: value for coefficient, value in scores.items() if not math.isnan(value)}
    if not valid:
        raise ValueError(f"No WiSE-FT coefficient has a validation score: {scores}.")
    best = max(valid.values())
    return next(coefficient for coefficient, value in valid.items() if value == best), scores
