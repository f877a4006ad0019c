"""Every command spells its shared options alike, and the old spellings still work, saying which to use."""

import pytest

from busi.commands import cache, download, evaluate, explain, export, import_keras, predict
from busi.commands.options import SHARED
from busi.data.download import FOLDER_NAME


def options(parser) -> dict[str, object]:
    return {action.option_strings[0]: action for action in parser._actions if action.option_strings}


PARSERS = {
    "busi-predict": predict.parser,
    "busi-evaluate": evaluate.parser,
    "busi-explain": explain.parser,
    "busi-cache": cache.parser,
    "busi-download": download.parser,
}


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_shared_options_are_spelled_and_typed_alike(command):
    found = options(PARSERS[command]())
    shared = [name for name in SHARED if name in found]
    assert shared, command
    for name in shared:
        if name in ("--device", "--batch_size", "--quiet"):  # same default and help everywhere
            assert found[name].default == options(predict.parser())[name].default
            assert found[name].help == SHARED[name]["help"]
    assert not {"--root", "--cam_dir", "--ckpt_path"} & set(found)  # the old spellings are gone


def test_export_and_import_keras_share_the_spellings_too(tmp_path, capsys):
    # their parsers live in main(): --help shows them
    for main in (export.main, import_keras.main):
        with pytest.raises(SystemExit):
            main(["--help"])
        shown = capsys.readouterr().out
        assert "--output" in shown and "--ckpt_path" not in shown


def test_old_spellings_still_work_and_say_which_to_use(tmp_path, capsys):
    url = "http://127.0.0.1:9/x.zip"  # nothing listens: the download fails after the options are read
    assert download.main(["--root", str(tmp_path), "--url", url, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--root is now --data.root; this run uses --data.root {tmp_path / FOLDER_NAME}" in err
    assert str(tmp_path / FOLDER_NAME) in err.splitlines()[-1]  # the error names the folder it tried

    missing = str(tmp_path / "none.ckpt")
    assert explain.main(["--ckpt", missing, "--data.root", str(tmp_path), "--cam_dir", str(tmp_path / "cams")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert f"warning: busi-explain: --cam_dir is now --cam; this run uses --cam {tmp_path / 'cams'}" == err[0]
    assert "checkpoint not found" in err[1]  # the option was taken: what stops it is the checkpoint
