"""Issue 37's opt-in regularisers: MixUp and CutMix with the labels and lesion masks mixed alike, and
stochastic weight averaging; each against a hand computation, per seed, and through an exact resume."""

import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from busi.commands.train import main
from busi.data.mixing import mix_batch
from busi.errors import SettingError
from busi.evaluation.history import read_history
from busi.io.images import MASK_UNKNOWN
from busi.model.classifier import BusiClassifier
from busi.model.losses import ClassificationLoss
from busi.model.settings import Loss
from busi.training.run import run

from fake_busi import IMAGE_SIZE, train_args
from training_runs import LAST, load, report, scratch_args, start_training, wait_for, without_times

SWA = "--trainer.callbacks+=busi.callbacks.averaging.StochasticWeightAveraging"


def batch(seed: int = 0, size: int = 16):
    """Three images whose every pixel differs from the others', labels 0, 1, 2 (each image's partner, the
    one before it, has another label), masks: two known, the last unknown."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(3, 3, size, size, generator=generator) + torch.arange(3.0).view(3, 1, 1, 1)
    masks = (torch.rand(3, 1, size, size, generator=generator) > 0.5).to(torch.uint8)
    masks[2] = MASK_UNKNOWN
    return images, torch.tensor([0, 1, 2]), masks


def test_mixup_blends_images_masks_and_labels_with_one_lambda():
    images, targets, masks = batch()
    torch.manual_seed(3)
    mixed, soft, mixed_masks = mix_batch(images, targets, 3, "mixup", 1.0, masks)
    lam = soft[1, 1].item()  # image 1's own label; its partner is image 0
    assert 0 < lam < 1
    partner = [2, 0, 1]
    for i in range(3):
        expected = torch.zeros(3)
        expected[targets[i]] += lam
        expected[targets[partner[i]]] += 1 - lam
        assert torch.allclose(soft[i], expected)
        assert torch.allclose(mixed[i], lam * images[i] + (1 - lam) * images[partner[i]], atol=1e-6)
    assert torch.allclose(mixed_masks[1], lam * masks[1].float() + (1 - lam) * masks[0].float(), atol=1e-6)
    # image 0's partner (2) and image 2 itself have no known mask: unknown, out of the segmentation loss
    assert (mixed_masks[0] == MASK_UNKNOWN).all() and (mixed_masks[2] == MASK_UNKNOWN).all()


def test_cutmix_pastes_the_partners_box_into_the_image_and_its_mask():
    images, targets, masks = batch(size=32)
    masks[2] = (torch.rand(1, 32, 32) > 0.5).to(torch.uint8)  # all known
    torch.manual_seed(5)
    mixed, soft, mixed_masks = mix_batch(images, targets, 3, "cutmix", 1.0, masks)
    pasted = (mixed[1] != images[1]).any(dim=0)  # (H, W): where image 0 was pasted into image 1
    rows, columns = pasted.any(dim=1).nonzero()[:, 0], pasted.any(dim=0).nonzero()[:, 0]
    box = (slice(rows.min(), rows.max() + 1), slice(columns.min(), columns.max() + 1))
    assert pasted[box].all() and pasted.sum() == pasted[box].numel()  # one rectangle
    assert torch.equal(mixed[1][:, box[0], box[1]], images[0][:, box[0], box[1]])
    area = pasted.float().mean().item()
    assert soft[1, 1].item() == pytest.approx(1 - area) and soft[1, 0].item() == pytest.approx(area)
    expected_mask = masks[1].float().clone()
    expected_mask[:, box[0], box[1]] = masks[0, :, box[0], box[1]].float()
    assert torch.equal(mixed_masks[1], expected_mask)
    for i in (0, 2):  # the same box in every image of the batch
        assert torch.equal((mixed[i] != images[i]).any(dim=0), pasted)


def test_mixing_follows_the_seed():
    images, targets, masks = batch()
    draws = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        draws.append(mix_batch(images, targets, 3, "cutmix", 1.0, masks))
    assert all(torch.equal(a, b) for a, b in zip(draws[0], draws[1], strict=True))
    assert not torch.equal(draws[0][1], draws[2][1])


def test_soft_targets_give_the_lambda_weighted_cross_entropies():
    logits = torch.randn(3, 3)
    loss = ClassificationLoss(Loss(), 3)
    hard = torch.tensor([0, 1, 2])
    assert torch.allclose(loss(logits, F.one_hot(hard, 3).float()), loss(logits, hard))
    lam, partner = 0.3, hard.roll(1)
    soft = lam * F.one_hot(hard, 3).float() + (1 - lam) * F.one_hot(partner, 3).float()
    expected = lam * F.cross_entropy(logits, hard) + (1 - lam) * F.cross_entropy(logits, partner)
    assert torch.allclose(loss(logits, soft), expected)


def test_mixing_settings_that_cannot_work_are_refused_in_one_line(busi_root, tmp_path, capsys):
    with pytest.raises(SettingError, match="mixing_alpha 0"):
        BusiClassifier(weights="none", image_size=IMAGE_SIZE, augmentation={"mixing": "mixup", "mixing_alpha": 0})
    assert main(train_args(busi_root, tmp_path, "--model.augmentation.mixing=cutmix", "--model.loss.name=focal")) == 2
    error = capsys.readouterr().err.strip()
    assert "--model.augmentation.mixing gives soft targets" in error and "\n" not in error
    with pytest.raises(SettingError, match="mixing blend"):
        BusiClassifier(weights="none", augmentation={"mixing": "blend"})


class EpochWeights(Callback):
    """The head's weights at the end of each training epoch (what the averaging adds)."""

    def __init__(self):
        self.seen: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seen.append(
            {k: v.detach().clone() for k, v in pl_module.state_dict().items() if k.startswith("model.head")}
        )


def test_stochastic_weight_averaging_is_the_mean_of_the_epochs_from_its_start(busi_root, tmp_path):
    args = [SWA, "--trainer.callbacks.start_epoch=1", "--trainer.callbacks+=test_regularisers.EpochWeights"]
    cli = run(train_args(busi_root, tmp_path, *args, "--checkpoint.monitor=null", epochs=3))  # best = last epoch
    recorded = next(c for c in cli.trainer.callbacks if isinstance(c, EpochWeights)).seen
    assert len(recorded) == 3
    best = load(Path(cli.trainer.checkpoint_callback.best_model_path))["state_dict"]
    for key, first in recorded[1].items():
        assert torch.allclose(best[key], (first + recorded[2][key]) / 2, atol=1e-6), key
    assert not torch.allclose(best[key], recorded[2][key])


def test_before_its_start_epoch_the_checkpoint_holds_the_weights_reached(busi_root, tmp_path):
    args = [SWA, "--trainer.callbacks.start_epoch=5", "--trainer.callbacks+=test_regularisers.EpochWeights"]
    cli = run(train_args(busi_root, tmp_path, *args, "--checkpoint.monitor=null", epochs=2))
    last_epoch = next(c for c in cli.trainer.callbacks if isinstance(c, EpochWeights)).seen[-1]
    best = load(Path(cli.trainer.checkpoint_callback.best_model_path))["state_dict"]
    assert all(torch.equal(best[key], value) for key, value in last_epoch.items())  # not the starting weights


@pytest.fixture(scope="module")
def mixed_args(busi_root):
    """The whole network with CutMix (images, masks and labels), the lesion decoder and SWA from epoch 0
    (so the kill, inside epoch 1, interrupts an average of one epoch)."""
    return lambda runs: [
        *scratch_args(busi_root, runs, 2), "--model.augmentation.mixing=cutmix", SWA, "--trainer.callbacks.start_epoch=0",
    ]  # fmt: skip


def test_a_mixed_averaged_run_killed_mid_training_resumes_to_the_uninterrupted_result(mixed_args, tmp_path):
    reference_runs, runs = tmp_path / "uninterrupted", tmp_path / "killed"
    assert main(mixed_args(reference_runs)) == 0
    log = tmp_path / "killed.log"
    process = start_training(mixed_args(runs), log)
    wait_for(runs / LAST, process, log)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert main([*mixed_args(runs), "--ckpt_path=last"]) == 0
    run_dir, reference = runs / "lightning_logs/version_0", reference_runs / "lightning_logs/version_0"
    assert report(run_dir) == report(reference)
    assert without_times(read_history(run_dir)) == without_times(read_history(reference))
    resumed, expected = load(run_dir / "checkpoints/best.ckpt"), load(reference / "checkpoints/best.ckpt")
    assert all(torch.equal(resumed["state_dict"][key], value) for key, value in expected["state_dict"].items())
