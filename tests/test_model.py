import urllib.error

import lightning as L
import pytest
import torch
from torchvision.models import densenet121

from busi.data import BusiDataModule
from busi.model import BusiClassifier
from busi.network import DenseNetClassifier, WeightsError, imagenet_weights_file, parameter_counts

from fake_busi import IMAGE_SIZE


def test_head_matches_the_original_recipe_at_256_pixels():
    network = DenseNetClassifier(image_size=256, freeze_backbone=True)
    linear_shapes = [tuple(m.weight.shape) for m in network.head if isinstance(m, torch.nn.Linear)]
    assert linear_shapes == [(1024, 8 * 8 * 1024), (1024, 1024), (512, 1024), (128, 512), (3, 128)]
    dropouts = [m.p for m in network.head if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.5, 0.3]
    assert parameter_counts(network) == (68_750_339, 6_953_856)
    assert parameter_counts(DenseNetClassifier(image_size=256, freeze_backbone=False)) == (75_704_195, 0)


def test_forward_returns_logits_for_a_batch():
    network = DenseNetClassifier(image_size=IMAGE_SIZE).eval()
    with torch.no_grad():
        logits = network(torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert logits.shape == (2, 3)
    assert not torch.allclose(logits.softmax(1).sum(1), logits.sum(1))  # logits, not probabilities


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


def fake_imagenet_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    return densenet121(weights=None).state_dict()


def test_imagenet_weights_come_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state_dict = fake_imagenet_state_dict()
    imagenet_weights_file().parent.mkdir(parents=True)
    torch.save(state_dict, imagenet_weights_file())
    classifier = BusiClassifier(weights="imagenet", image_size=IMAGE_SIZE)
    assert torch.equal(classifier.model.features.conv0.weight, state_dict["features.conv0.weight"])
    assert torch.equal(
        classifier.model.features.denseblock4.denselayer16.norm2.running_var,
        state_dict["features.denseblock4.denselayer16.norm2.running_var"],
    )


def test_local_weights_file_with_legacy_keys_loads(tmp_path):
    legacy = {}
    for key, value in fake_imagenet_state_dict().items():
        legacy[key.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2.")] = value
    assert any(".norm.1." in key for key in legacy)
    path = tmp_path / "densenet121.pth"
    torch.save(legacy, path)
    classifier = BusiClassifier(weights=str(path), image_size=IMAGE_SIZE)
    expected = legacy["features.denseblock1.denselayer1.norm.1.weight"]
    assert torch.equal(classifier.model.features.denseblock1.denselayer1.norm1.weight, expected)


def test_offline_without_cached_imagenet_weights_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsError) as error:
        BusiClassifier(weights="imagenet", image_size=IMAGE_SIZE)
    message = str(error.value)
    assert str(imagenet_weights_file()) in message and "--model.weights none" in message
    assert "\n" not in message


def test_weights_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(WeightsError, match="do not fit DenseNet121"):
        BusiClassifier(weights=str(path), image_size=IMAGE_SIZE)


def train_head(busi_root, tmp_path, cache_features: bool) -> tuple[BusiClassifier, int]:
    L.seed_everything(7)
    classifier = BusiClassifier(weights=None, image_size=IMAGE_SIZE, cache_features=cache_features)
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
    compiled = BusiClassifier(weights=None, image_size=IMAGE_SIZE, compile=True).state_dict()
    assert list(compiled) == list(plain)
    assert not any("_orig_mod" in key for key in compiled)
