import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassCalibrationError

from busi.evaluation.calibration import fit_temperature


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
