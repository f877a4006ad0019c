import numpy as np
from PIL import Image

from busi.io.digests import perceptual_hash

from fake_busi import ultrasound_like


def test_near_duplicates_hash_close_and_distinct_scans_far():
    rng = np.random.default_rng(1)
    scan = ultrasound_like(rng, 0, 120, 110)
    nearly = np.clip(scan[3:-3, 2:-2].astype(np.int16) + 4, 0, 255).astype(np.uint8)
    other = ultrasound_like(rng, 0, 120, 110)
    hash_of = lambda a: perceptual_hash(Image.fromarray(a))  # noqa: E731
    assert np.sum(hash_of(scan) != hash_of(nearly)) <= 4
    assert np.sum(hash_of(scan) != hash_of(other)) > 10
