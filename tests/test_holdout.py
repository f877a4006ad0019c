"""benchmarks/holdout.py: the held-out folders it links, and the scores it reads from them."""

import json
from pathlib import Path

import pytest

from benchmarks.holdout import link, score, summary
from busi.callbacks.prediction_writer import predict_files
from busi.data.files import image_files
from busi.model.classifier import load_classifier


def images_under(folder: Path) -> set[str]:
    return {path.name for path in image_files([folder])}


@pytest.mark.parametrize("folds", [0, 3])
def test_link_splits_every_readable_image_once_with_its_masks_and_keeps_duplicates_together(busi_root, tmp_path, folds):
    holdouts = []
    for fold in range(max(folds, 1)):
        out = tmp_path / f"fold_{fold}"
        counts = link(busi_root, out, seed=42, folds=folds, fold=fold)
        pool, holdout = images_under(out / "pool"), images_under(out / "holdout")
        assert not pool & holdout and counts == {"pool": len(pool), "holdout": len(holdout)}
        assert "normal (11).png" not in pool | holdout  # the corrupt file is left out, as in training
        for image in out.rglob("*).png"):
            original = busi_root / image.parent.name / image.name
            assert image.resolve() == original.resolve()
            masks = {p.name for p in original.parent.glob(f"{original.stem}_mask*.png")}
            assert masks <= {p.name for p in image.parent.iterdir()}
        assert any(out.rglob("*_mask_1.png"))  # every mask file of an image travels with it
        near_duplicates = {"benign (1).png", "benign (11).png"}
        assert near_duplicates <= pool or near_duplicates <= holdout
        holdouts.append(holdout)
    if folds:  # over the folds, every image is held out exactly once
        assert sum(map(len, holdouts)) == len(set().union(*holdouts)) == len(pool | holdout)


def test_score_of_a_checkpoint_agrees_with_its_predictions(busi_root, trained_run, tmp_path):
    _, run_dir = trained_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    link(busi_root, tmp_path, seed=7, folds=0, fold=0)
    holdout = tmp_path / "holdout"
    (row,) = score([ckpt], holdout).values()
    predictions = list(predict_files(load_classifier(ckpt), sorted((holdout).rglob("*).png"))))
    classes = ("benign", "malignant", "normal")
    correct = [classes[max(range(3), key=p.probabilities.__getitem__)] == p.path.parent.name for p in predictions]
    assert row["accuracy"] == pytest.approx(sum(correct) / len(correct))
    assert set(row) == {"accuracy", "macro_f1", "auroc_macro_ovr", "malignant_recall"}


def test_summary_averages_each_kind_of_model_over_holdouts(tmp_path):
    """Fold models pool across folds and seeds; a CV's ensemble and a single run (a distilled student) keep
    their own rows, never mixed with the fold models' best.ckpt."""
    for seed, accuracy in ((42, 0.6), (7, 0.8)):
        run = "lightning_logs/version_0/checkpoints"
        rows = {
            f"runs/holdout{seed}/cv/e28 ensemble": {"accuracy": accuracy + 0.1},
            f"runs/holdout{seed}/cv/e28/fold_0/{run}/best.ckpt": {"accuracy": accuracy},
            f"runs/holdout{seed}/cv/e28/fold_1/{run}/best.ckpt": {"accuracy": accuracy},
            f"runs/holdout{seed}/cv/e28/fold_0/{run}/last.ckpt": {"accuracy": 0.5},
            f"runs/holdout{seed}/students/e28_out_of_fold/{run}/best.ckpt": {"accuracy": 0.9},
        }
        (tmp_path / f"{seed}.json").write_text(json.dumps(rows))
    lines = summary([tmp_path / "42.json", tmp_path / "7.json"])
    assert lines == {
        "e28 ensemble (2)": {"accuracy": "0.800 ± 0.141"},
        "fold best.ckpt (4)": {"accuracy": "0.700 ± 0.115"},
        "fold last.ckpt (2)": {"accuracy": "0.500 ± 0.000"},
        "e28_out_of_fold best.ckpt (2)": {"accuracy": "0.900 ± 0.000"},
    }
