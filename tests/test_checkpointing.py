"""Killed, terminated and repeated runs: nothing lost, and resumed runs end where uninterrupted ones do."""

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import WeightAveraging

from busi.commands.predict import main as predict_main
from busi.commands.train import main
from busi.evaluation.history import read_history
from busi.model.classifier import load_classifier
from busi.training.checkpointing import AtomicCheckpointIO
from busi.training.run import run

from fake_busi import IMAGE_SIZE, train_args
from training_runs import LAST, load, report, scratch_args, start_training, wait_for, without_times


@pytest.fixture(scope="module")
def uninterrupted(busi_root, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("uninterrupted")
    assert main(scratch_args(busi_root, runs, 3)) == 0
    return runs / "lightning_logs" / "version_0"


def test_a_run_killed_mid_training_resumes_to_the_uninterrupted_result(uninterrupted, busi_root, tmp_path):
    args = scratch_args(busi_root, tmp_path, 3)
    log = tmp_path / "killed.log"
    process = start_training(args, log)
    wait_for(tmp_path / LAST, process, log)  # written atomically at the end of epoch 0
    process.send_signal(signal.SIGKILL)  # now inside epoch 1
    process.wait()
    state = load(tmp_path / LAST)
    assert state["epoch"] == 0 and state["global_step"] > 0

    assert main([*args, "--ckpt_path=last"]) == 0
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert not (tmp_path / "lightning_logs" / "version_1").exists()  # resumed in its own directory
    assert report(run_dir) == report(uninterrupted)
    assert without_times(read_history(run_dir)) == without_times(read_history(uninterrupted))  # each epoch once
    for name in ("best.ckpt", "last.ckpt"):  # last: the weights after the epochs trained after the kill
        resumed, reference = load(run_dir / "checkpoints" / name), load(uninterrupted / "checkpoints" / name)
        assert resumed["epoch"] == reference["epoch"]
        for key, value in reference["state_dict"].items():
            assert torch.equal(resumed["state_dict"][key], value), (name, key)


def test_a_run_stopped_during_validation_resumes_to_the_uninterrupted_result(uninterrupted, busi_root, tmp_path):
    args = scratch_args(busi_root, tmp_path, 3)
    log = tmp_path / "terminated.log"
    lightnings = tmp_path / "lightnings"  # Lightning's own checkpoint of the moment it stopped
    process = start_training(
        [
            *args, "--trainer.callbacks+=training_runs.TerminateDuringValidation",
            "--trainer.callbacks+=lightning.pytorch.callbacks.OnExceptionCheckpoint",
            f"--trainer.callbacks.dirpath={lightnings}",
        ],
        log,
    )  # fmt: skip
    assert process.wait(timeout=300) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    assert load(tmp_path / LAST)["epoch"] == 0  # the end of epoch 0 kept, not the middle of epoch 1's validation
    stopped = lightnings / "on_exception.ckpt"
    validation = load(stopped)["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
    assert validation["current"]["completed"] == 1 and not validation["is_last_batch"]  # between two batches

    assert main([*args, "--ckpt_path=last"]) == 0
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert report(run_dir) == report(uninterrupted)
    assert without_times(read_history(run_dir)) == without_times(read_history(uninterrupted))

    # Resumed from the middle of the validation, that validation runs again; the training state was complete.
    elsewhere = tmp_path / "from_lightnings"
    assert main([*scratch_args(busi_root, elsewhere, 3), f"--ckpt_path={stopped}"]) == 0
    assert report(elsewhere / "lightning_logs" / "version_0") == report(uninterrupted)


def test_two_runs_with_the_same_seed_give_identical_metrics_and_predictions(uninterrupted, busi_root, tmp_path):
    assert main(scratch_args(busi_root, tmp_path, 3)) == 0
    again = tmp_path / "lightning_logs" / "version_0"
    assert report(again) == report(uninterrupted)
    outputs = []
    for run_dir in (uninterrupted, again):
        outputs.append(tmp_path / f"{len(outputs)}.csv")
        predict_main(["--ckpt", str(run_dir / "checkpoints/best.ckpt"), str(busi_root), "--output", str(outputs[-1])])
    assert outputs[0].read_text() == outputs[1].read_text()


def test_sigterm_saves_the_training_state_and_the_run_continues_from_it(busi_root, tmp_path):
    args = scratch_args(busi_root, tmp_path, 40)
    log = tmp_path / "terminated.log"
    process = start_training(args, log)
    wait_for(tmp_path / LAST, process, log)
    steps_per_epoch = load(tmp_path / LAST)["global_step"]
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    assert "training state saved to" in log.read_text()
    saved = load(tmp_path / LAST)
    assert saved["global_step"] > steps_per_epoch  # progress after epoch 0 was kept

    assert main([*scratch_args(busi_root, tmp_path, saved["epoch"] + 2), "--ckpt_path=last"]) == 0
    assert load(tmp_path / LAST)["global_step"] >= saved["global_step"]
    assert (tmp_path / "lightning_logs/version_0/report.json").is_file()


def test_resume_without_a_checkpoint_exits_with_one_line(busi_root, tmp_path, capsys):
    assert main([*scratch_args(busi_root, tmp_path, 1), "--ckpt_path=last"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: --ckpt_path last: no ") and "last.ckpt" in error


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_resuming_from_a_checkpoint_that_would_run_code_is_refused(busi_root, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "loops": RunsCode(marker)}, evil)
    assert main([*scratch_args(busi_root, tmp_path, 1), f"--ckpt_path={evil}"]) == 2
    assert "refused" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not marker.exists()


class FailsHalfway:
    def __reduce__(self):
        raise RuntimeError("disk full")


def test_a_failed_checkpoint_write_leaves_the_previous_file_intact(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "best.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}}, path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "extra": FailsHalfway()}, path)
    assert path.read_bytes() == before
    plain = tmp_path / "plain"
    plain.touch()
    assert path.stat().st_mode == plain.stat().st_mode  # permissions as for any file the user writes
    plain.unlink()
    assert [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]  # no temporary file left behind


def test_checkpoints_hold_only_tensors_and_plain_values(trained_run):
    _, run_dir = trained_run
    for name in ("best.ckpt", "last.ckpt"):
        assert load(run_dir / "checkpoints" / name)["state_dict"]
    assert load_classifier(run_dir / "checkpoints/best.ckpt").hparams.image_size == IMAGE_SIZE


def test_with_weight_averaging_best_ckpt_holds_the_averaged_weights(busi_root, tmp_path):
    ema = ["--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging", "--trainer.callbacks.decay=0.5"]
    cli = run(train_args(busi_root, tmp_path, *ema, "--checkpoint.monitor=null", epochs=3))  # best = last epoch
    averaging = next(c for c in cli.trainer.callbacks if isinstance(c, WeightAveraging))
    averaged = averaging._average_model.module.state_dict()
    best = load(Path(cli.trainer.checkpoint_callback.best_model_path))
    head = [key for key in best["state_dict"] if key.startswith("model.head") and key.endswith("weight")]
    assert head and all(torch.equal(best["state_dict"][key], averaged[key]) for key in head)
    assert not {"optimizer_states", "current_model_state"} & set(best)  # as small as without averaging
    assert load_classifier(cli.trainer.checkpoint_callback.best_model_path).temperature > 0


def test_a_best_checkpoint_fine_tunes_in_a_new_run_on_its_own_split(trained_run, busi_root, tmp_path):
    """`--ckpt_path RUN/checkpoints/best.ckpt` (weights only) is a starting point, not a resume: a new run
    directory, the old run's split (its test images stay unseen), and its weights (learning rate 0 keeps
    them)."""
    _, old_run = trained_run
    finished = run(
        train_args(busi_root, tmp_path, f"--ckpt_path={old_run / 'checkpoints/best.ckpt'}", "--model.optimizer.lr=0")
    )
    assert finished.run_dir.parent == tmp_path / "lightning_logs"
    assert (finished.run_dir / "split.csv").read_text() == (old_run / "split.csv").read_text()
    old = load(old_run / "checkpoints/best.ckpt")["state_dict"]
    new = load(finished.run_dir / "checkpoints/best.ckpt")["state_dict"]
    assert all(torch.equal(old[key], new[key]) for key in old if key != "temperature")
