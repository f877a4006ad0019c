"""busi-download against a server the test starts on 127.0.0.1, serving BUSI-layout ZIPs the test
writes: a whole download, one resumed after a cut connection, and bad archives, each with one line."""

import hashlib
import io
import json
import stat
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from busi.commands.download import main
from busi.data.audit import SOURCE_RECORD
from busi.data.catalog import read_catalog
from busi.data.download import FOLDER_NAME

from fake_busi import write_busi_folder


def busi_zip(source: Path, prefix: str = "Dataset_BUSI_with_GT") -> bytes:
    """The official archive's layout: Dataset_BUSI_with_GT/<class>/<image and masks>, plus macOS litter."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                bundle.write(path, f"{prefix}/{path.relative_to(source).as_posix()}")
        bundle.writestr("__MACOSX/._Dataset_BUSI_with_GT", b"")
    return buffer.getvalue()


class Archive:
    """What the server sends: `body`; with `cut_first`, the first N responses stop halfway."""

    def __init__(self, body: bytes, cut_first: int = 0):
        self.body, self.cut_first, self.ranges = body, cut_first, []


@pytest.fixture
def server():
    archive = Archive(b"")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body, start = archive.body, 0
            requested = self.headers.get("Range")
            archive.ranges.append(requested)
            if requested:
                start = int(requested.removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            if archive.cut_first > 0:
                archive.cut_first -= 1
                self.wfile.write(body[start : start + (len(body) - start) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body[start:])

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield archive, f"http://127.0.0.1:{httpd.server_address[1]}/Dataset_BUSI.zip"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def busi_archive(tmp_path_factory) -> bytes:
    return busi_zip(write_busi_folder(tmp_path_factory.mktemp("source") / "busi", per_class=4))


def one_error(capsys) -> str:
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    return errors[0]


def test_download_unpacks_busi_and_records_where_it_came_from(server, busi_archive, tmp_path, capsys):
    archive, url = server
    archive.body = busi_archive
    assert main(["--data.root", str(tmp_path / "data" / FOLDER_NAME), "--url", url, "--quiet"]) == 0
    target = tmp_path / "data" / FOLDER_NAME
    assert sorted(p.name for p in target.iterdir()) == ["benign", SOURCE_RECORD, "malignant", "normal"]
    record = json.loads((target / SOURCE_RECORD).read_text())
    assert record["sha256"] == hashlib.sha256(busi_archive).hexdigest() and record["url"] == url
    assert record["per_class"]["malignant"] == {"images": 4, "masks": 5}
    assert list((tmp_path / "data").iterdir()) == [target]  # no archive, no partial file left
    catalog = read_catalog(target, 64, duplicate_distance=-1)
    assert catalog.audit["source"]["sha256"] == record["sha256"]
    assert "Train: busi-train --data.root" in capsys.readouterr().out
    assert (
        main(["--data.root", str(tmp_path / "data" / FOLDER_NAME), "--url", url]) == 0
    )  # there already: nothing fetched
    assert len(archive.ranges) == 1


def test_a_cut_connection_is_resumed_from_where_it_stopped(server, busi_archive, tmp_path, capsys):
    archive, url = server
    archive.body, archive.cut_first = busi_archive, 3  # every attempt of the first command is cut
    assert main(["--data.root", str(tmp_path / FOLDER_NAME), "--url", url, "--quiet"]) == 2
    assert "run the command again to continue" in one_error(capsys)
    partial = tmp_path / "Dataset_BUSI.zip.part"
    kept = partial.stat().st_size
    assert 0 < kept < len(busi_archive) and busi_archive.startswith(partial.read_bytes())
    archive.cut_first = 1  # the next command is cut once more, then finishes
    assert main(["--data.root", str(tmp_path / FOLDER_NAME), "--url", url, "--quiet"]) == 0
    assert archive.ranges[3] == f"bytes={kept}-" and archive.ranges[4].startswith("bytes=")
    record = json.loads((tmp_path / FOLDER_NAME / SOURCE_RECORD).read_text())
    assert record["sha256"] == hashlib.sha256(busi_archive).hexdigest()


def link_member(name: str, points_to: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def bad_archives(good: bytes) -> dict[str, tuple[bytes, str]]:
    corrupt = bytearray(good)
    middle = len(corrupt) // 2
    corrupt[middle : middle + 64] = bytes(64)  # inside a member: its CRC no longer matches
    escaping, linked, other = io.BytesIO(), io.BytesIO(), io.BytesIO()
    with zipfile.ZipFile(escaping, "w") as bundle:
        bundle.writestr("Dataset_BUSI_with_GT/benign/benign (1).png", b"x")
        bundle.writestr("Dataset_BUSI_with_GT/../../escaped.txt", b"owned")
    with zipfile.ZipFile(linked, "w") as bundle:
        bundle.writestr(link_member("Dataset_BUSI_with_GT/benign/link.png", "/etc/passwd"), "/etc/passwd")
    with zipfile.ZipFile(other, "w") as bundle:
        bundle.writestr("photos/cat.png", b"x")
    return {
        "corrupt": (bytes(corrupt), "not a whole ZIP archive"),
        "not a zip": (b"<html>moved</html>", "not a whole ZIP archive"),
        "escaping": (escaping.getvalue(), "points outside the folder it unpacks to"),
        "link": (linked.getvalue(), "is a link"),
        "not busi": (other.getvalue(), "this is not the BUSI archive"),
    }


def test_bad_archives_are_refused_with_one_line_and_nothing_unpacked(server, busi_archive, tmp_path, capsys):
    archive, url = server
    for name, (body, expected) in bad_archives(busi_archive).items():
        root = tmp_path / name / "data"
        archive.body = body
        assert main(["--data.root", str(root / FOLDER_NAME), "--url", url, "--quiet"]) == 2, name
        error = one_error(capsys)
        assert expected in error, (name, error)
        assert not (root / FOLDER_NAME).exists() and not any(root.iterdir()), name  # nothing kept
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()


def test_no_server_says_how_to_place_the_data_by_hand(tmp_path, capsys):
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_address[1]  # bound, then closed: nothing listens there
    assert (
        main(
            [
                "--data.root",
                str(tmp_path / FOLDER_NAME),
                "--url",
                f"http://127.0.0.1:{port}/Dataset_BUSI.zip",
                "--quiet",
            ]
        )
        == 2
    )
    error = one_error(capsys)
    assert "could not download" in error and f"by hand and unpack it so that {tmp_path / FOLDER_NAME} holds" in error


def test_training_with_download_fetches_the_data_first(server, busi_archive, tmp_path):
    from busi.training.run import run

    from fake_busi import train_args

    archive, url = server
    archive.body = busi_archive
    root = tmp_path / "data" / FOLDER_NAME
    finished = run(train_args(root, tmp_path / "runs", "--data.download=true", f"--data.download_url={url}", epochs=1))
    assert finished.report is not None and (root / SOURCE_RECORD).is_file()
    audit = json.loads((finished.run_dir / "audit.json").read_text())
    assert audit["source"]["url"] == url
