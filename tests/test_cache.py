import hashlib

import numpy as np
import torch
from PIL import Image

from busi.data.cache import DecodedImageCache
from busi.data.catalog import read_catalog
from busi.io.images import decode_file

from fake_busi import IMAGE_SIZE, write_busi_folder


def distinct_contents(root) -> int:
    images = [p for p in root.rglob("*.png") if "_mask" not in p.name]
    return len({hashlib.sha256(p.read_bytes()).digest() for p in images})


def test_cached_images_equal_a_fresh_decode(busi_root, tmp_path):
    images = [p for p in busi_root.rglob("*.png") if "_mask" not in p.name]
    first = read_catalog(busi_root, IMAGE_SIZE, 10, cache_dir=tmp_path)
    assert first.cache.misses == distinct_contents(busi_root) < len(images)  # a byte-identical copy is a hit
    second = read_catalog(busi_root, IMAGE_SIZE, 10, cache_dir=tmp_path)
    assert second.cache.misses == 0 and second.cache.hits == len(images)
    for record, pixels in zip(second.records, second.pixels, strict=True):
        assert torch.equal(pixels, decode_file(record.path, IMAGE_SIZE).pixels)
    assert second.groups == first.groups and second.audit == first.audit


def test_a_changed_or_added_file_is_decoded_again(tmp_path):
    root = write_busi_folder(tmp_path / "busi", per_class=4)
    read_catalog(root, IMAGE_SIZE, 10, cache_dir=tmp_path / "cache")
    changed = root / "benign" / "benign (2).png"
    Image.fromarray(np.full((90, 80), 77, dtype=np.uint8)).save(changed)
    Image.fromarray(np.full((90, 80), 200, dtype=np.uint8)).save(root / "normal" / "normal (99).png")
    catalog = read_catalog(root, IMAGE_SIZE, 10, cache_dir=tmp_path / "cache")
    assert catalog.cache.misses == 2
    index = [r.path for r in catalog.records].index(changed)
    assert torch.all(catalog.pixels[index] == 77)


def test_other_settings_never_share_a_cache_file(tmp_path):
    assert DecodedImageCache(tmp_path, 64).path != DecodedImageCache(tmp_path, 128).path


def test_a_corrupt_cache_file_is_ignored_and_rebuilt(busi_root, tmp_path, capsys):
    read_catalog(busi_root, IMAGE_SIZE, 10, cache_dir=tmp_path)
    cache_file = DecodedImageCache(tmp_path, IMAGE_SIZE).path
    cache_file.write_bytes(b"garbage")
    catalog = read_catalog(busi_root, IMAGE_SIZE, 10, cache_dir=tmp_path)
    assert (
        catalog.cache.misses == distinct_contents(busi_root)
        and "ignoring unreadable image cache" in capsys.readouterr().err
    )
    assert DecodedImageCache(tmp_path, IMAGE_SIZE).entries  # rewritten whole


def test_cache_command_fills_the_cache_ahead_of_time(busi_root, tmp_path, capsys):
    from busi.commands.cache import main as cache_main

    args = [f"--data.root={busi_root}", f"--data.image_size={IMAGE_SIZE}", f"--data.cache_dir={tmp_path}"]
    assert cache_main(args) == 0
    assert f"{distinct_contents(busi_root)} decoded" in capsys.readouterr().out
    assert cache_main(args) == 0
    assert " 0 decoded" in capsys.readouterr().out
    assert cache_main([f"--data.root={tmp_path / 'missing'}"]) == 2


def test_images_beyond_the_memory_limit_are_read_from_disk_unchanged(busi_root, tmp_path):
    in_memory = read_catalog(busi_root, IMAGE_SIZE, 10, cache_dir=None)
    limit_mb = 0.03  # a few 64×64 images
    limited = read_catalog(busi_root, IMAGE_SIZE, 10, cache_dir=tmp_path, memory_limit_mb=limit_mb)
    held = [p for p in limited.pixels if p is not None]
    assert held and limited.streamed == len(limited.records) - len(held) > 0
    assert sum(p.numel() for p in held) <= limit_mb * 2**20
    assert limited.audit["streamed_from_disk"] == limited.streamed
    for index in range(len(in_memory.records)):
        assert torch.equal(limited.image(index), in_memory.image(index))
    cached = DecodedImageCache(tmp_path, IMAGE_SIZE, limit_mb * 2**20)
    assert 0 < cached.pixel_bytes <= limit_mb * 2**20
    assert all({"digest", "error", "mask"} & entry.keys() for entry in cached.entries.values())  # hashes of every image
    # a second run with the same limit decodes only what it keeps in memory
    again = read_catalog(busi_root, IMAGE_SIZE, 10, cache_dir=tmp_path, memory_limit_mb=limit_mb)
    assert again.cache.misses <= len(held) and again.groups == limited.groups
