"""In-domain self-supervised pretraining: the contrastive loss against a hand computation, busi-pretrain's
backbone (made from the train split only, the same for the same seed) loading with --model.weights, and
busi-train --pretraining.epochs pretraining inside the run."""

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet18

from busi.commands.pretrain import main as pretrain_main
from busi.commands.train import main as train_main
from busi.model.classifier import load_classifier
from busi.model.contrastive import nt_xent, random_crops
from busi.training.pretraining import PRETRAINING_KEY
from busi.training.run import run

from fake_busi import IMAGE_SIZE, train_args

PRETRAIN = ["--pretraining.epochs=2", "--pretraining.batch_size=8"]


def test_nt_xent_is_the_cross_entropy_of_each_view_against_its_partner():
    first, second = torch.randn(3, 5), torch.randn(3, 5)
    z = F.normalize(torch.cat([first, second]), dim=1)
    expected = 0.0
    for i in range(6):
        partner = (i + 3) % 6
        others = [j for j in range(6) if j != i]
        scores = torch.stack([z[i] @ z[j] / 0.5 for j in others])
        expected -= (scores[others.index(partner)] - torch.logsumexp(scores, dim=0)).item()
    assert nt_xent(first, second, 0.5).item() == pytest.approx(expected / 6, rel=1e-5)
    assert nt_xent(first, first, 0.05) < nt_xent(first, second, 0.05)  # identical views: the easy answer


def test_random_crops_keep_the_size_and_at_least_the_share_asked():
    images = torch.arange(64.0).view(1, 1, 8, 8).repeat(4, 3, 1, 1)
    torch.manual_seed(0)
    assert torch.allclose(random_crops(images, 1.0), images, atol=1e-4)  # the whole image: unchanged
    cropped = random_crops(images, 0.25)
    assert cropped.shape == images.shape
    spread = cropped.amax(dim=(1, 2, 3)) - cropped.amin(dim=(1, 2, 3))
    assert (spread >= 63 * math.sqrt(0.25) * 0.7).all()  # a side of at least half the image's


def split_images(run_dir: Path, split: str) -> list[str]:
    with (run_dir / "split.csv").open() as handle:
        return [row["path"] for row in csv.DictReader(handle) if row["split"] == split]


@pytest.fixture(scope="module")
def backbone(busi_root, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("pretrained") / "backbone.pt"
    args = ["--data.root", str(busi_root), f"--data.image_size={IMAGE_SIZE}", *PRETRAIN, "--output", str(output)]
    assert pretrain_main(args) == 0
    return output


def test_busi_pretrain_learns_from_the_train_split_only_and_the_same_seed_gives_the_same_backbone(
    backbone, busi_root, tmp_path
):
    state = torch.load(backbone, map_location="cpu", weights_only=True)
    made = state[PRETRAINING_KEY]
    cli = run(train_args(busi_root, tmp_path / "runs", "--trainer.max_epochs=0"))  # the split busi-train makes
    run_dir = Path(cli.trainer.log_dir)
    assert (
        made["images"]
        == len(split_images(run_dir, "train"))
        < len(split_images(run_dir, "train")) + len(split_images(run_dir, "test"))
    )
    assert made["objective"] == "simclr" and made["images_seen"] > 0 and made["final_loss"] > 0
    again = tmp_path / "again.pt"
    args = ["--data.root", str(busi_root), f"--data.image_size={IMAGE_SIZE}", *PRETRAIN, "--output", str(again)]
    assert pretrain_main(args) == 0
    repeated = torch.load(again, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(repeated[key], value) for key, value in state["state_dict"].items())


def test_a_pretrained_backbone_is_what_model_weights_starts_from(backbone, busi_root, tmp_path):
    features = torch.load(backbone, map_location="cpu", weights_only=True)["state_dict"]
    args = train_args(busi_root, tmp_path, f"--model.weights={backbone}", "--trainer.max_epochs=0")
    model = run(args).model  # frozen backbone: the pretrained weights as they were
    for key, value in model.model.features.state_dict().items():
        assert torch.equal(value, features[f"features.{key}"]), key
    random = run(train_args(busi_root, tmp_path, "--trainer.max_epochs=0")).model.model.features.state_dict()
    assert not torch.equal(random["conv0.weight"], features["features.conv0.weight"])


def test_a_backbone_of_another_architecture_is_refused_in_one_line(busi_root, tmp_path, capsys):
    other = tmp_path / "resnet18.pt"
    torch.save(resnet18(weights=None).state_dict(), other)
    assert train_main(train_args(busi_root, tmp_path, f"--model.weights={other}")) == 2
    error = capsys.readouterr().err.strip()
    assert str(other) in error and "do not fit DenseNet121" in error and "\n" not in error


def test_busi_train_pretrains_on_its_own_train_split_first(busi_root, tmp_path):
    args = train_args(busi_root, tmp_path, *PRETRAIN, "--model.freeze_backbone=true", epochs=1)
    cli = run(args)
    run_dir = Path(cli.trainer.log_dir)
    backbone = torch.load(run_dir / "backbone.pt", map_location="cpu", weights_only=True)
    assert backbone[PRETRAINING_KEY]["images"] == len(split_images(run_dir, "train"))
    trained = load_classifier(run_dir / "checkpoints" / "best.ckpt").model.features.state_dict()
    for key, value in trained.items():  # the frozen backbone of the finished model is the pretrained one
        assert torch.equal(value, backbone["state_dict"][f"features.{key}"]), key
