import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from busi.data.module import BusiDataModule
from busi.errors import SettingError
from busi.model.classifier import BusiClassifier
from busi.model.losses import ClassificationLoss, DistillationLoss
from busi.model.settings import Loss, Speed

from fake_busi import IMAGE_SIZE


def batchnorm_statistics(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in network.features.state_dict().items() if "running" in k}


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_backbone_keeps_batchnorm_statistics_through_a_training_epoch(busi_root, tmp_path, freeze):
    torch.manual_seed(0)
    classifier = BusiClassifier(weights=None, freeze_backbone=freeze, image_size=IMAGE_SIZE)
    before_stats = batchnorm_statistics(classifier.model)
    before_features = classifier.model.features.conv0.weight.clone()
    before_head = classifier.model.head[1].weight.clone()
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_checkpointing=False,
        logger=False,
    )
    trainer.fit(classifier, datamodule=BusiDataModule(root=str(busi_root), image_size=IMAGE_SIZE, batch_size=4))
    after_stats = batchnorm_statistics(classifier.model)
    stats_unchanged = all(torch.equal(before_stats[k], after_stats[k]) for k in before_stats)
    assert stats_unchanged is freeze
    assert torch.equal(before_features, classifier.model.features.conv0.weight) is freeze
    assert not torch.equal(before_head, classifier.model.head[1].weight)


def train_head(busi_root, tmp_path, cache_features: bool) -> tuple[BusiClassifier, int]:
    L.seed_everything(7)
    classifier = BusiClassifier(weights=None, image_size=IMAGE_SIZE, speed=Speed(cache_features=cache_features))
    calls = 0

    def count_backbone_batches(module, args, output):
        nonlocal calls
        calls += 1

    classifier.model.features.register_forward_hook(count_backbone_batches)
    trainer = L.Trainer(
        max_epochs=3,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_checkpointing=False,
        logger=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(classifier, datamodule=BusiDataModule(root=str(busi_root), image_size=IMAGE_SIZE, batch_size=4))
    return classifier, calls


def test_feature_cached_training_gives_the_same_head_with_one_backbone_pass(busi_root, tmp_path):
    cached, cached_calls = train_head(busi_root, tmp_path, cache_features=True)
    uncached, uncached_calls = train_head(busi_root, tmp_path, cache_features=False)
    cached_head, uncached_head = cached.model.head.state_dict(), uncached.model.head.state_dict()
    for name, weight in cached_head.items():
        assert torch.allclose(weight, uncached_head[name], atol=1e-5), name
    assert uncached_calls == 3 * cached_calls  # 3 epochs of backbone passes against one


def test_compiled_model_keeps_plain_checkpoint_keys():
    plain = BusiClassifier(weights=None, image_size=IMAGE_SIZE).state_dict()
    compiled = BusiClassifier(weights=None, image_size=IMAGE_SIZE, speed=Speed(compile=True)).state_dict()
    assert list(compiled) == list(plain)
    assert not any("_orig_mod" in key for key in compiled)


def test_label_smoothing_moves_its_share_of_the_training_target_evenly_onto_every_class():
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 2, 1, 0])
    log_p = logits.log_softmax(dim=1)
    hard = F.nll_loss(log_p, targets)
    smoothed = BusiClassifier(weights=None, image_size=IMAGE_SIZE, loss=Loss(label_smoothing=0.1))
    assert torch.allclose(smoothed.training_loss(logits, targets), 0.9 * hard + 0.1 * (-log_p.mean(dim=1)).mean())
    plain = BusiClassifier(weights=None, image_size=IMAGE_SIZE)
    assert torch.allclose(plain.training_loss(logits, targets), hard)


def test_focal_loss_is_the_written_out_formula_with_the_class_weights():
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 2, 1, 0])
    model = BusiClassifier(weights=None, image_size=IMAGE_SIZE, loss=Loss(name="focal", focal_gamma=2.0))
    model.training_loss.class_weight = torch.tensor([0.5, 2.0, 3.0])
    expected_sum, weights_sum = 0.0, 0.0
    for row, target in zip(logits.tolist(), targets.tolist(), strict=True):
        exps = [math.exp(v) for v in row]
        p_true = exps[target] / sum(exps)
        weight = [0.5, 2.0, 3.0][target]
        expected_sum += -weight * (1 - p_true) ** 2 * math.log(p_true)
        weights_sum += weight
    assert model.training_loss(logits, targets).item() == pytest.approx(expected_sum / weights_sum, rel=1e-6)
    unfocused = ClassificationLoss(Loss(name="focal", focal_gamma=0.0), 3)  # γ 0 is the weighted cross-entropy
    unfocused.class_weight = model.training_loss.class_weight
    weighted = F.cross_entropy(logits, targets, weight=unfocused.class_weight)
    assert torch.allclose(unfocused(logits, targets), weighted)
    with pytest.raises(SettingError, match="focal"):
        BusiClassifier(weights=None, image_size=IMAGE_SIZE, loss=Loss(name="focal", label_smoothing=0.1))


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_distillation_with_its_own_probabilities_and_weight_one_is_the_soft_cross_entropy():
    torch.manual_seed(2)
    model = BusiClassifier(weights=None, image_size=IMAGE_SIZE).eval()
    pixels = torch.randint(0, 256, (4, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    keys = [f"image{i}" for i in range(4)]
    with torch.no_grad():
        own = model.infer(pixels).uncalibrated
        model.training_loss = DistillationLoss(model.training_loss, dict(zip(keys, own, strict=True)), weight=1.0)
        loss = model.training_step((pixels, torch.tensor([0, 1, 2, 0]), keys, torch.zeros(4, 1, 1, 1)), 0)
    by_hand = sum(-sum(q * math.log(q) for q in row) for row in own.tolist()) / 4  # the teacher's entropy
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
