import torch

from busi.data.augment import augment_batch


def test_augmentation_varies_per_image_but_never_turns_the_scan_upside_down():
    torch.manual_seed(0)
    image = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    image[:, :, :20] = 200  # bright skin line at the top, as under the transducer
    image[:, :, 20:, :16] = 120  # something on the left
    augmented = augment_batch(image.expand(32, -1, -1, -1))
    assert augmented.shape == (32, 3, 64, 64) and augmented.dtype == torch.float32
    assert augmented.min() >= 0 and augmented.max() <= 1
    assert all(a[:, :16].mean() > a[:, -16:].mean() for a in augmented)  # the top stays on top
    left_brighter = sum(bool(a[:, 24:, :16].mean() > a[:, 24:, -16:].mean()) for a in augmented)
    assert 6 < left_brighter < 26  # mirrored about half of the time
    assert len({round(float(a.mean()), 4) for a in augmented}) == 32  # one draw per image


def test_long_run_geometry_turns_scans_upside_down_half_of_the_time_and_moves_masks_alike():
    torch.manual_seed(1)
    image = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    image[:, :, :20] = 200
    mask = torch.zeros(1, 1, 64, 64, dtype=torch.uint8)
    mask[:, :, :20] = 1  # the mask covers the bright band: it must follow the image
    augmented, masks = augment_batch(
        image.expand(64, -1, -1, -1), mask.expand(64, -1, -1, -1), max_rotation_degrees=0, vertical_flip=True
    )
    top_brighter = [bool(a[:, :16].mean() > a[:, -16:].mean()) for a in augmented]
    assert 16 < sum(top_brighter) < 48  # upside down about half of the time
    assert all(
        bool(m[:, :16].float().mean() > m[:, -16:].float().mean()) == t
        for m, t in zip(masks, top_brighter, strict=True)
    )
    rotated = augment_batch(image.expand(64, -1, -1, -1), max_rotation_degrees=180)
    assert 8 < sum(bool(a[:, :16].mean() > a[:, -16:].mean()) for a in rotated) < 56  # any angle
