import torch

from busi.augment import augment_batch


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
