"""k-fold cross-validation: `busi-cv --folds 5 [busi-train options …]`; each fold is an ordinary
training run, and the summary pools every fold's held-out predictions."""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from jsonargparse import ArgumentParser

from busi.errors import OptionError, run_command

if TYPE_CHECKING:
    from busi.training.run import TrainingRun


def write_out_of_fold(fold: TrainingRun, run_dir: Path) -> None:
    """The held-out fold's probabilities (calibrated as reported, and raw) for the pooled summary, and the
    validation fold's alike (validation.csv: what fitted the temperature and the prediction sets)."""
    from torch.utils.data import DataLoader

    from busi.model.answering import answer

    model, datamodule = fold.model.eval(), fold.datamodule
    names = model.class_names
    from busi.training.finish import calibration_split

    for split, file in ((calibration_split(datamodule), "validation.csv"), ("test", "out_of_fold.csv")):
        images = datamodule.dataset(split)  # all of it: this runs on one process only
        outputs = answer(model, DataLoader(images, batch_size=datamodule.hparams.eval_batch_size))
        partial = run_dir / f"{file}.part"  # out_of_fold.csv marks the fold done: written whole or not at all
        with partial.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            header = ["path", "label", *(f"p_{n}" for n in names), *(f"raw_p_{n}" for n in names), "overlaid"]
            writer.writerow(header)
            for row, index in enumerate(images.indices):
                probabilities, raw = outputs.probabilities[row].tolist(), outputs.uncalibrated[row].tolist()
                drawn = int(datamodule.catalog.overlaid[index])
                writer.writerow(
                    [datamodule.catalog.relative(index), int(images.labels[row]), *probabilities, *raw, drawn]
                )
        partial.replace(run_dir / file)


CV_OPTIONS = ("--folds", "--only_folds", "--name", "--trainer.default_root_dir")


def parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="busi-cv",
        description="k-fold cross-validation of a busi-train recipe. Every option other than these is busi-train's "
        "and applies to each fold.",
    )
    parser.add_argument("--folds", type=int, default=5, help="k: at least 3 (one fold tests, one validates)")
    parser.add_argument("--trainer.default_root_dir", type=Path, default=Path("runs"), help="the root of ROOT/NAME")
    parser.add_argument("--name", default="cv", help="the folder under the root: ROOT/NAME")
    parser.add_argument(
        "--only_folds",
        type=str | None,
        default=None,
        help="train only these folds, e.g. 0,1 (to screen a recipe on a few folds, or share the folds between "
        "machines); the summary is written once every fold is done",
    )
    return parser


def chosen_folds(only_folds: str | None, folds: int) -> list[int]:
    if only_folds is None:
        return list(range(folds))
    try:
        chosen = sorted({int(fold) for fold in only_folds.split(",")})
    except ValueError:
        chosen = []
    if not chosen or not all(0 <= fold < folds for fold in chosen):
        raise OptionError(f"--only_folds {only_folds}: give fold numbers from 0 to {folds - 1}, comma-separated")
    return chosen


def split_arguments(argv: list[str]) -> tuple[list[str], list[str]]:
    """(busi-cv's own options, the busi-train options passed on to every fold)."""
    own, train, taking = [], [], False
    for arg in argv:
        if taking or arg in ("-h", "--help") or arg.split("=", 1)[0] in CV_OPTIONS:
            own.append(arg)
            taking = arg in CV_OPTIONS  # `--folds 5`: its value follows
        else:
            train.append(arg)
    return own, train


def cross_validate(folds: int, cv_dir: Path, train_args: list[str], only: list[int] | None = None) -> None:
    """The images are cut into k stratified, duplicate-aware folds (busi.data.splits.fold_splits). Fold i
    trains on k-2 folds, picks its best epoch and fits its temperature on fold i+1, and is tested on fold
    i, so every image is tested exactly once by a model that never saw it or its near-duplicates. Folds
    run in cv_dir/fold_i/lightning_logs/version_0 (checkpoints kept); the summary (per fold, mean ± sd,
    pooled out-of-fold confusion matrix and calibration) goes to cv_summary.json/.txt, the PNGs and
    TensorBoard in cv_dir. Run it again to finish an interrupted cross-validation: finished folds are
    kept, an interrupted fold resumes from its last checkpoint. `only` trains some folds and leaves the
    summary to the run that finishes the last one."""
    if folds < 3:
        raise OptionError("--folds must be at least 3 (one fold tests, one validates, the rest train)")
    # imported here, not above: --help and option errors come before torch and Lightning load
    from busi.evaluation.cross_validation import fold_dir, fold_done, format_summary, summarise, write_summary
    from busi.training.run import run

    fold_loggers = []
    for fold in range(folds) if only is None else only:
        run_dir = fold_dir(cv_dir, fold)
        if fold_done(cv_dir, fold):
            print(f"fold {fold}: done before, kept ({run_dir})")
            continue
        fold_args = [*train_args, f"--data.folds={folds}", f"--data.fold={fold}"]
        fold_args.append(f"--trainer.default_root_dir={cv_dir / f'fold_{fold}'}")
        if (run_dir / "checkpoints" / "last.ckpt").is_file():
            print(f"fold {fold}: interrupted, resumed from its last checkpoint ({run_dir})")
            fold_args.append(f"--ckpt_path={run_dir}")
        elif run_dir.parent.is_dir():  # stopped before its first checkpoint: nothing to keep
            print(f"fold {fold}: interrupted before its first checkpoint, trained again")
            shutil.rmtree(run_dir.parent)
        trained = run(fold_args)
        fold_loggers += trained.trainer.loggers
        if trained.trainer.is_global_zero:
            write_out_of_fold(trained, run_dir)
    missing = [fold for fold in range(folds) if not fold_done(cv_dir, fold)]
    if missing:
        print(f"\nFolds {', '.join(map(str, missing))} not trained yet: run again without --only_folds to summarise.")
        return
    summary = summarise(cv_dir, folds)
    write_summary(summary, cv_dir, fold_loggers)
    print(format_summary(summary))
    print(f"\nCross-validation directory: {cv_dir}")


def main(argv: list[str] | None = None) -> int:
    own, train_args = split_arguments(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(own)
    cv_dir = args.trainer.default_root_dir / args.name
    return run_command(
        lambda: cross_validate(args.folds, cv_dir, train_args, chosen_folds(args.only_folds, args.folds))
    )


if __name__ == "__main__":
    sys.exit(main())
