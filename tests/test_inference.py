import pytest
import torch
import torch.nn.functional as F

from busi.model.classifier import BusiClassifier
from busi.model.settings import Loss, Speed


def reference_grad_cam(classifier, images, classes):
    """Grad-CAM the textbook way: backpropagate through the whole network to the feature map."""
    features = F.relu(classifier.model.features(images.clone().requires_grad_(True)))
    features.retain_grad()
    logits = classifier.model.head(features)
    logits.gather(1, classes[:, None]).sum().backward()
    weights = features.grad.mean(dim=(2, 3), keepdim=True)
    cams = F.relu((weights * features).sum(dim=1, keepdim=True))
    cams = F.interpolate(cams, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return cams / cams.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)  # a map can be all zero


@pytest.mark.parametrize("frozen", [True, False])
def test_grad_cam_matches_the_textbook_computation_even_in_inference_mode(frozen):
    torch.manual_seed(0)
    classifier = BusiClassifier(
        weights=None, freeze_backbone=frozen, image_size=128, speed=Speed(channels_last=False)
    ).eval()
    images = torch.randn(3, 3, 128, 128)
    classes = torch.tensor([0, 2, 1])
    expected = reference_grad_cam(classifier, images, classes)
    with torch.inference_mode():  # as in Lightning's validation and test loops
        explanation = classifier.infer(images, explain=classes)
    assert explanation.cams.shape == (3, 128, 128)
    assert torch.allclose(explanation.cams, expected, atol=1e-5)
    peaks = explanation.cams.amax(dim=(1, 2))
    assert ((peaks == 1) | (peaks == 0)).all() and (peaks == 1).any()
    with torch.no_grad():
        assert torch.allclose(explanation.probabilities, classifier(images).softmax(1), atol=1e-6)
    assert classifier.infer(images, explain=True).explained.tolist() == explanation.probabilities.argmax(1).tolist()


def test_grad_cam_of_the_lesion_head_sums_its_feature_maps_not_the_lesion_probability():
    """The lesion head reads the final features, dense block 3 and the predicted lesion; the heat-map is
    Grad-CAM over the two feature maps, the gradients taken through the whole head."""
    torch.manual_seed(0)
    classifier = BusiClassifier(
        weights=None,
        freeze_backbone=False,
        image_size=64,
        head="lesion",
        loss=Loss(segmentation_weight=0.5),
        speed=Speed(channels_last=False),
    ).eval()
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    classes = torch.tensor([1, 2])
    with torch.no_grad():
        features, _ = classifier.model.encode(classifier.prepare_inputs(pixels))
    features.requires_grad_(True)
    classifier.model.head(features).gather(1, classes[:, None]).sum().backward()
    maps = classifier.model.cam_channels
    assert maps == features.shape[1] - 1  # all but the lesion probability
    weights = features.grad[:, :maps].mean(dim=(2, 3), keepdim=True)
    cams = F.relu((weights * features.detach()[:, :maps]).sum(dim=1, keepdim=True))
    cams = F.interpolate(cams, size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    expected = cams / cams.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    with torch.inference_mode():
        explanation = classifier.infer(pixels, explain=classes)
    assert torch.allclose(explanation.cams, expected, atol=1e-5)
