import urllib.error
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchvision.models import densenet121

from busi.model.classifier import BusiClassifier
from busi.model.network import DenseNetClassifier, WeightsError, imagenet_weights_file, parameter_counts
from busi.training.run import run

from fake_busi import IMAGE_SIZE, train_args


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


def test_densenet_dropout_acts_while_training_only_and_per_seed():
    torch.manual_seed(0)
    plain = DenseNetClassifier(image_size=IMAGE_SIZE, freeze_backbone=False)
    dropping = DenseNetClassifier(image_size=IMAGE_SIZE, freeze_backbone=False, drop_rate=0.2)
    dropping.load_state_dict(plain.state_dict())  # no parameters of its own: the same checkpoint keys
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    plain.eval(), dropping.eval()
    with torch.no_grad():
        assert torch.equal(plain(images), dropping(images))  # answering: no dropout
        plain.train(), dropping.train()
        runs = []
        for seed in (1, 1, 2):
            torch.manual_seed(seed)
            runs.append(dropping.extract(images))
        torch.manual_seed(1)
        undropped = plain.extract(images)
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])  # one mask per seed
    assert not torch.equal(runs[0], undropped)
    with pytest.raises(Exception, match="drop_rate 1"):
        DenseNetClassifier(image_size=IMAGE_SIZE, drop_rate=1.0)
    model = BusiClassifier(weights="none", image_size=IMAGE_SIZE, freeze_backbone=False, drop_rate=0.1)
    assert model.hparams.drop_rate == 0.1 and model.model.features.denseblock1.denselayer1.drop_rate == 0.1


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
    assert str(imagenet_weights_file()) in message and "--config scratch" in message
    assert "\n" not in message


def test_weights_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(WeightsError, match="do not fit DenseNet121"):
        BusiClassifier(weights=str(path), image_size=IMAGE_SIZE)


def fake_imagenet_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    return densenet121(weights=None).state_dict()


def test_pooled_head_has_the_same_layers_after_global_average_pooling_at_any_size():
    flatten, pooled = DenseNetClassifier(256), DenseNetClassifier(256, head="pooled")
    first = 8 * 8 * 1024 * 1024 + 1024  # the flatten head's first layer
    assert parameter_counts(pooled) == (68_750_339 - first + 1024 * 1024 + 1024, 6_953_856)
    assert parameter_counts(flatten)[0] - parameter_counts(pooled)[0] > 66_000_000
    shapes = [tuple(m.weight.shape) for m in pooled.head if isinstance(m, torch.nn.Linear)]
    assert shapes == [(1024, 1024), (1024, 1024), (512, 1024), (128, 512), (3, 128)]
    small = DenseNetClassifier(128, head="pooled").eval()
    small.load_state_dict(pooled.state_dict())  # one set of weights fits every input size
    with torch.no_grad():
        assert small(torch.randn(2, 3, 128, 128)).shape == (2, 3)


def test_finetune_recipe_trains_the_head_first_then_the_imagenet_backbone(busi_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    weights = fake_imagenet_state_dict()
    imagenet_weights_file().parent.mkdir(parents=True)
    torch.save(weights, imagenet_weights_file())
    conv0 = {}
    for epochs in (2, 3):  # the recipe unfreezes at epoch 5: here at 2, to keep the test short
        args = train_args(busi_root, tmp_path / f"runs{epochs}", epochs=epochs)[1:]  # the recipe's weights
        cli = run(
            [
                "--config",
                "finetune",
                *args,
                "--finetuning.unfreeze_backbone_at_epoch=2",
                "--resume.keep_when_finished=true",
            ]
        )
        run_dir = Path(cli.trainer.log_dir)
        state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        conv0[epochs] = state["model.features.conv0.weight"]
    hp = cli.model.hparams
    assert hp.weights == "imagenet" and cli.model.model.segments and hp.head == "pooled"
    assert torch.equal(conv0[2], weights["features.conv0.weight"])  # fixed while the head trained
    assert not torch.equal(conv0[3], conv0[2])  # then trained
    events = EventAccumulator(str(run_dir))
    events.Reload()
    head, backbone = (events.Scalars(f"lr-AdamW/pg{group}")[-1].value for group in (1, 2))
    ratio = cli.model.settings.optimizer.backbone_lr_ratio
    assert backbone == pytest.approx(head * ratio) and ratio < 1
