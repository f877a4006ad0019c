"""`busi-download [--root data]`: the dataset's official archive fetched (resumed when cut), checked as a
whole ZIP holding the BUSI class folders, and unpacked safely into ROOT/Dataset_BUSI_with_GT."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import urllib.error
import urllib.request
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from busi import CLASS_NAMES
from busi.data.audit import SOURCE_RECORD
from busi.errors import DataError
from busi.progress import progress_bar

OFFICIAL_URL = "https://scholar.cu.edu.eg/Dataset_BUSI.zip"  # Al-Dhabyani et al., Data in Brief 28 (2020)
FOLDER_NAME = "Dataset_BUSI_with_GT"
ATTEMPTS = 3
CHUNK = 1 << 20


def by_hand(target: Path, url: str) -> str:
    return f"download {url} by hand and unpack it so that {target} holds benign/, malignant/ and normal/"


def download_busi(target: Path, url: str = OFFICIAL_URL, quiet: bool = False) -> Path:
    """Leave BUSI in `target` (the folder --data.root names), unless it is there already."""
    target = Path(target)
    if all((target / name).is_dir() for name in CLASS_NAMES):
        return target
    if target.exists() and any(target.iterdir()):
        raise DataError(f"{target}: exists without BUSI's class folders; move it away or pick another --root")
    target.parent.mkdir(parents=True, exist_ok=True)
    archive = target.parent / (PurePosixPath(url).name or "Dataset_BUSI.zip")
    if not archive.is_file():
        fetch(url, archive, target, quiet)
    try:
        unpack(archive, target, url)
    finally:  # unpacked, or not the archive it should be: either way it is not kept
        archive.unlink(missing_ok=True)
    return target


def fetch(url: str, archive: Path, target: Path, quiet: bool = False) -> None:
    """Download into ARCHIVE.part, continuing it with an HTTP Range request when a connection is cut
    (up to ATTEMPTS times in one command; a later command continues from what was kept)."""
    partial = archive.with_name(archive.name + ".part")
    for attempt in range(1, ATTEMPTS + 1):
        try:
            fetch_once(url, partial, quiet)
            partial.replace(archive)
            return
        except ValueError as error:  # not an http(s) URL, or one with spaces
            raise DataError(f"--url {url}: not a URL to download from ({error})") from None
        except urllib.error.HTTPError as error:
            raise DataError(f"{url}: the server answered {error.code} {error.reason}; {by_hand(target, url)}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            if attempt == ATTEMPTS or not partial.is_file():
                kept = partial.stat().st_size if partial.is_file() else 0
                retry = f" ({kept / 2**20:.1f} MiB kept: run the command again to continue)" if kept else ""
                raise DataError(f"could not download {url} ({reason}){retry}; or {by_hand(target, url)}") from None


def fetch_once(url: str, partial: Path, quiet: bool) -> None:
    """One request from where ARCHIVE.part ends; OSError when the connection closes before the end."""
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        if have and response.status != 206:  # the server ignored the range: start again
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with (
            partial.open("ab" if have else "wb") as handle,
            progress_bar(total=total, what="BUSI archive", quiet=quiet, unit="B", initial=have) as bar,
        ):  # fmt: skip
            while chunk := response.read(CHUNK):
                handle.write(chunk)
                bar.update(len(chunk))
    size = partial.stat().st_size
    if total is not None and size < total:
        raise OSError(f"connection closed at {size} of {total} bytes")


def unpack(archive: Path, target: Path, url: str) -> None:
    """Check the ZIP (whole, CRCs right, BUSI's class folders with images and masks, no member outside
    the target and no links), unpack the dataset folder into `target` through a temporary folder, and
    record the archive's SHA-256 and the counts beside the class folders."""
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as bundle:
            damaged = bundle.testzip()
            members = bundle.infolist()
            if damaged is not None:
                raise zipfile.BadZipFile(f"bad CRC in {damaged}")
            check_members(members, archive)
            base, counts = dataset_folder(members, archive)
            for member in members:
                if member.is_dir() or "__MACOSX" in member.filename or not is_under(member.filename, base):
                    continue
                relative = PurePosixPath(member.filename).relative_to(base or ".")
                destination = staging.joinpath(*relative.parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(member) as source, destination.open("wb") as sink:
                    shutil.copyfileobj(source, sink)
    except (zipfile.BadZipFile, EOFError, zlib.error) as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(
            f"{archive}: not a whole ZIP archive ({error}); deleted it: run the command again, or "
            f"{by_hand(target, url)}"
        ) from None
    except DataError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    sha256 = hashlib.sha256()
    with archive.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            sha256.update(chunk)
    record = {
        "url": url,
        "archive": archive.name,
        "sha256": sha256.hexdigest(),
        "downloaded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "per_class": counts,
    }
    (staging / SOURCE_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
    staging.replace(target)
    from busi.data.catalog import check_data_root  # here: busi-download's --help comes before torch loads

    check_data_root(target)


def is_under(name: str, base: str) -> bool:
    return not base or PurePosixPath(name).parts[: len(PurePosixPath(base).parts)] == PurePosixPath(base).parts


def dataset_folder(members: list[zipfile.ZipInfo], archive: Path) -> tuple[str, dict]:
    """The folder inside the archive that holds benign/, malignant/ and normal/ ("" for the top), and its
    images and masks per class; DataError when there is none or a class folder has no images or masks."""
    from busi.io.images import is_image_file, is_mask

    files = [PurePosixPath(m.filename) for m in members if not m.is_dir() and "__MACOSX" not in m.filename]
    for candidate in sorted({str(path.parent.parent) for path in files if len(path.parts) >= 2}, key=len):
        base = "" if candidate == "." else candidate
        counts = {}
        for name in CLASS_NAMES:
            folder = PurePosixPath(base, name)
            inside = [path for path in files if path.parent == folder and is_image_file(Path(path.name))]
            masks = sum(is_mask(Path(path.name)) for path in inside)
            counts[name] = {"images": len(inside) - masks, "masks": masks}
        if all(counts[name]["images"] for name in CLASS_NAMES):
            lacking = [name for name in CLASS_NAMES if name != "normal" and not counts[name]["masks"]]
            if lacking:
                raise DataError(f"{archive}: the class folders {lacking} hold no masks; this is not the BUSI archive")
            return base, counts
    tops = sorted({path.parts[0] for path in files})[:5]
    raise DataError(
        f"{archive}: no folder with benign/, malignant/ and normal/ images in the archive (it holds {tops}); "
        "this is not the BUSI archive"
    )


def check_members(members: list[zipfile.ZipInfo], archive: Path) -> None:
    """No absolute path, no `..`, no link: a member that would land outside the target is refused."""
    for member in members:
        path = PurePosixPath(member.filename.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or (path.parts and path.parts[0].endswith(":")):
            raise DataError(f"{archive}: refused: member {member.filename!r} points outside the folder it unpacks to")
        if stat.S_ISLNK(member.external_attr >> 16):
            raise DataError(f"{archive}: refused: member {member.filename!r} is a link")
