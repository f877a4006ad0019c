"""The bad-input matrix: every kind of odd file, in training and in prediction.

Each case is one file added to a BUSI-like folder. Training must use it or skip it with a one-line
reason naming it (counted in the audit); prediction must give it a probability row or an error row.
Folder-level problems that make training meaningless are refused up front with the reason."""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busi.commands.predict import main as predict_main
from busi.commands.train import main as train_main

from fake_busi import train_args, ultrasound_like, write_busi_folder


def scan(seed: int, size: tuple[int, int] = (90, 110)) -> Image.Image:
    return Image.fromarray(ultrasound_like(np.random.default_rng(seed), 0, *size), "L")


def write_case(name: str, folder: Path) -> Path:
    """Write the file of one case into `folder`; return the path a user would pass to predict.py."""
    if name == "zero-byte file":
        path = folder / "zero.png"
        path.write_bytes(b"")
    elif name == "truncated PNG":
        path = folder / "truncated.png"
        scan(1).save(path)
        path.write_bytes(path.read_bytes()[:300])
    elif name == "text file named .png":
        path = folder / "notes.png"
        path.write_text("radiologist notes, not an image\n")
    elif name in ("JPEG", "BMP", "TIFF"):
        path = folder / f"scan.{name.lower()}"
        scan(2).save(path)
    elif name == "16-bit PNG":
        path = folder / "sixteen.png"
        Image.fromarray(np.asarray(scan(3), dtype=np.uint16) * 257).save(path)
    elif name == "palette PNG":
        path = folder / "palette.png"
        scan(4).convert("P").save(path)
    elif name == "RGBA PNG":
        path = folder / "rgba.png"
        scan(5).convert("RGBA").save(path)
    elif name == "CMYK JPEG":
        path = folder / "cmyk.jpg"
        scan(6).convert("CMYK").save(path)
    elif name == "1x1 image":
        path = folder / "dot.png"
        Image.new("L", (1, 1), 128).save(path)
    elif name == "10000x10000 image":
        path = folder / "huge.png"
        Image.new("L", (10_000, 10_000), 0).save(path)
    elif name == "spaces, brackets, non-ASCII name":
        path = folder / "benign (3) [copy] échographie Ω.png"
        scan(7).save(path)
    elif name == "symlink to an image":
        target = folder.parent.parent / "elsewhere.png"
        scan(8).save(target)
        path = folder / "linked.png"
        path.symlink_to(target)
    elif name == "broken symlink":
        path = folder / "dangling.png"
        path.symlink_to(folder / "gone.png")
    elif name == "hidden files":
        (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (folder / "._benign (1).png").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS resource fork
        (folder / ".ipynb_checkpoints").mkdir()
        path = folder / ".ipynb_checkpoints" / "benign (1)-checkpoint.png"
        scan(9).save(path)
    elif name == "image without a mask":
        path = folder / "unmasked.png"
        scan(10).save(path)
    elif name == "mask without its image":
        path = folder / "lost_mask.png"
        Image.new("1", (90, 110)).save(path)
    else:
        raise ValueError(name)
    return path


# case → (what training does, what prediction does, text its message must hold)
MATRIX = {
    "zero-byte file": ("skipped", "error", "empty file (0 bytes)"),
    "truncated PNG": ("skipped", "error", "not a readable image"),
    "text file named .png": ("skipped", "error", "unknown or unsupported format"),
    "JPEG": ("used", "predicted", ""),
    "BMP": ("used", "predicted", ""),
    "TIFF": ("used", "predicted", ""),
    "16-bit PNG": ("used", "predicted", ""),
    "palette PNG": ("used", "predicted", ""),
    "RGBA PNG": ("used", "predicted", ""),
    "CMYK JPEG": ("used", "predicted", ""),
    "1x1 image": ("used", "predicted", ""),
    "10000x10000 image": ("skipped", "error", "too large to decode safely (10000×10000"),
    "spaces, brackets, non-ASCII name": ("used", "predicted", ""),
    "symlink to an image": ("used", "predicted", ""),
    "broken symlink": ("skipped", "error", "file not found (a link to a missing file)"),
    "hidden files": ("ignored", "not listed", ""),
    "image without a mask": ("used", "predicted", ""),
    "mask without its image": ("orphan mask", "not listed", ""),
}


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """A BUSI folder with every case in benign/, one training run on it, and predict.py over it."""
    base = tmp_path_factory.mktemp("messy")
    root = write_busi_folder(base / "data" / "Dataset_BUSI_with_GT", per_class=8, seed=3)
    (root / "notes").mkdir()  # an extra folder that is not a class
    (root / "notes" / "protocol.png").write_text("not data")
    paths = {name: write_case(name, root / "benign") for name in MATRIX}
    runs = base / "runs"
    code = train_main(train_args(root, runs, epochs=1))
    assert code == 0
    run_dir = runs / "lightning_logs" / "version_0"
    output = base / "predictions.csv"
    assert (
        predict_main(["--ckpt", str(run_dir / "checkpoints/best.ckpt"), str(root / "benign"), "--output", str(output)])
        == 0
    )
    with output.open(encoding="utf-8") as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    audit = json.loads((run_dir / "audit.json").read_text())
    with (run_dir / "split.csv").open(encoding="utf-8") as handle:
        trained = {row["path"] for row in csv.DictReader(handle)}
    return root, paths, audit, trained, rows


@pytest.mark.parametrize("case", MATRIX)
def test_bad_input_matrix(messy, case):
    root, paths, audit, trained, rows = messy
    training, prediction, message = MATRIX[case]
    relative = paths[case].relative_to(root).as_posix()
    unreadable = {item["path"]: item["reason"] for item in audit["unreadable"]}
    if training == "used":
        assert relative in trained and relative not in unreadable
    elif training == "skipped":
        assert relative not in trained
        assert str(paths[case]) in unreadable[relative] and message in unreadable[relative]
        assert "\n" not in unreadable[relative]
    elif training == "ignored":
        assert relative not in trained and relative in audit["ignored_files"]
        assert {"benign/.DS_Store", "benign/._benign (1).png"} <= set(audit["ignored_files"])
    elif training == "orphan mask":
        assert relative not in trained and relative in audit["orphan_masks"]
    row = rows.get(str(paths[case]))
    if prediction == "predicted":
        assert row["error"] == "" and row["label"] in ("benign", "malignant", "normal")
    elif prediction == "error":
        assert row["label"] == "" and str(paths[case]) in row["error"] and message in row["error"]
    else:
        assert row is None


def test_the_audit_counts_masks_and_names_the_extra_folder(messy):
    _, _, audit, _, _ = messy
    assert audit["unknown_folders"] == ["notes"]
    benign = audit["per_class"]["benign"]
    assert benign["with_masks"] < benign["images"]  # the unmasked image, and the odd formats


def write_minimal(root: Path) -> Path:
    return write_busi_folder(root, per_class=4)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda root: shutil.rmtree(root / "normal"), "class folders ['normal'] are missing"),
        (lambda root: [p.unlink() for p in (root / "normal").iterdir()], "normal: no images in this class folder"),
        (
            lambda root: [os.rename(p, p.with_suffix(".txt")) for p in (root / "malignant").iterdir()],
            "malignant: no images in this class folder",
        ),
    ],
    ids=["missing class folder", "empty class folder", "class folder without images"],
)
def test_folders_that_cannot_train_are_refused_up_front(tmp_path, capsys, change, expected):
    root = write_minimal(tmp_path / "data")
    change(root)
    code = train_main(
        ["--model.weights=none", f"--data.root={root}", f"--trainer.default_root_dir={tmp_path / 'runs'}"]
    )
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and expected in error
    assert not (tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints").exists()
