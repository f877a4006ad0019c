"""Temperature scaling (Guo et al., 2017): one scalar T > 0 divides the logits, fitted by minimising
the negative log-likelihood on the validation split. Accuracy is unchanged; confidence is not.

A fit on a few validation images can make calibration worse: T runs to its upper bound when the
validation predictions are no better than chance (uniform probabilities minimise their NLL), it only
sharpens when every validation prediction is right, and a T that barely lowers the validation NLL is
noise. Then T stays 1, and the report says why."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

BOUNDS = (0.05, 20.0)
MIN_NLL_GAIN = 0.01  # T is kept only when it lowers the validation NLL by at least 1 % of its value at T = 1


@dataclass(frozen=True)
class Calibration:
    temperature: float  # the one applied: the fitted one, or 1 when it was not kept
    fitted: float  # what the fit found
    images: int  # validation images it was fitted on
    nll_before: float  # validation NLL at T = 1
    nll_after: float  # at the fitted T
    kept_one: str | None = None  # why T stays 1, or None

    def as_dict(self) -> dict:
        return {**asdict(self), "summary": self.describe()}

    def describe(self) -> str:
        """e.g. `temperature 1.712 fitted on 64 validation images`, or why it is 1."""
        if self.kept_one:
            return f"temperature 1: {self.kept_one}"
        return f"temperature {self.temperature:.3f} fitted on {self.images} validation images"


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 200) -> float:
    logits, targets = logits.detach().float().cpu(), targets.detach().cpu()
    log_temperature = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_temperature.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_temperature.detach().exp().clamp(*BOUNDS))


def calibration(logits: torch.Tensor, targets: torch.Tensor) -> Calibration:
    """The temperature to apply to these validation logits, with what the fit found and why it was not
    kept when it was not: it ran to a bound, or it lowered the validation NLL by less than MIN_NLL_GAIN."""
    logits, targets = logits.detach().float().cpu(), targets.detach().cpu()
    fitted = fit_temperature(logits, targets)
    before = float(F.cross_entropy(logits, targets)) if len(targets) else float("nan")
    after = float(F.cross_entropy(logits / fitted, targets)) if len(targets) else float("nan")
    images = len(targets)
    reason = None
    if not images:
        reason = "no validation images to fit it on"
    elif fitted <= BOUNDS[0] * 1.001 or fitted >= BOUNDS[1] * 0.999:
        reason = f"the fit ran to its bound ({fitted:g}) on {images} validation images"
    elif bool((logits.argmax(1) == targets).all()):
        reason = f"all {images} validation images are right, so a fit could only sharpen every answer"
    elif before - after < MIN_NLL_GAIN * before:
        reason = (
            f"the fitted {fitted:.3f} lowered the NLL of {images} validation images by less than "
            f"{MIN_NLL_GAIN:.0%} ({before:.4f} → {after:.4f})"
        )
    return Calibration(1.0 if reason else fitted, fitted, images, before, after, reason)
