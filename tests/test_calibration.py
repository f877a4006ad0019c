import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassCalibrationError

from busi.evaluation.calibration import BOUNDS, calibration, fit_temperature


def test_temperature_scaling_calibrates_overconfident_logits_without_changing_predictions():
    torch.manual_seed(0)
    targets = torch.randint(0, 3, (600,))
    logits = torch.randn(600, 3)
    logits[torch.arange(600), targets] += 1.0  # about 65 % accurate …
    logits *= 4  # … and far too confident
    temperature = fit_temperature(logits, targets)
    ece = MulticlassCalibrationError(3, n_bins=10)
    before, after = ece(logits.softmax(1), targets), ece((logits / temperature).softmax(1), targets)
    assert temperature > 1.5 and after <= before and after < 0.05
    assert F.cross_entropy(logits / temperature, targets) < F.cross_entropy(logits, targets)
    assert torch.equal((logits / temperature).argmax(1), logits.argmax(1))


def test_a_temperature_fitted_to_its_bound_or_to_all_right_validation_images_is_not_kept():
    """9 validation images answered confidently and no better than chance: uniform probabilities minimise
    their NLL, so the fit runs to 20 and would push every test probability towards a third. All right:
    the fit only sharpens. Either way T stays 1 and the report says why."""
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    predicted = torch.tensor([0, 1, 2, 1, 2, 0, 2, 0, 1])  # a third right
    logits = torch.zeros(9, 3)
    logits[torch.arange(9), predicted] = 6.0
    fitted = calibration(logits, targets)
    assert fitted.fitted == BOUNDS[1] and fitted.temperature == 1.0 and fitted.images == 9
    assert fitted.describe().startswith("temperature 1: the fit ran to its bound (20) on 9 validation images")
    logits = torch.zeros(9, 3)
    logits[torch.arange(9), targets] = 2.0
    sharpened = calibration(logits, targets)
    assert (
        sharpened.fitted < 1
        and sharpened.temperature == 1.0
        and "all 9 validation images are right" in sharpened.kept_one
    )


def test_a_temperature_that_barely_lowers_the_validation_nll_is_not_kept_and_a_real_gain_is():
    torch.manual_seed(1)
    targets = torch.randint(0, 3, (400,))
    logits = torch.randn(400, 3)
    logits[torch.arange(400), targets] += 1.0
    fitted = fit_temperature(logits, targets)
    well_calibrated = calibration(logits / fitted, targets)  # its own best T is about 1
    assert well_calibrated.temperature == 1.0 and "less than 1%" in well_calibrated.kept_one
    overconfident = calibration(4 * logits / fitted, targets)
    assert overconfident.kept_one is None and overconfident.temperature == pytest.approx(4, rel=0.05)
    assert overconfident.nll_after < 0.99 * overconfident.nll_before
    assert overconfident.describe() == f"temperature {overconfident.temperature:.3f} fitted on 400 validation images"
