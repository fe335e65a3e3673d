"""The kNN feature sets (``--features`` of eval/knn.py and the end-of-run report's columns).

``avgpool`` must be the mean of the final-norm PATCH tokens only: a CLS or register token in the mean
would hand a method that trains no CLS objective (I-JEPA) a feature it never trained.
"""

import pytest
import torch

from dinolite.commands.knn import FEATURE_KINDS, feature_fn
from dinolite.eval.knn_report import backbone_features, feature_columns
from dinolite.models.vision_transformer import DinoVisionTransformer

D, REGISTERS = 16, 2


@pytest.fixture(scope="module")
def vit_and_images():
    torch.manual_seed(0)
    net = DinoVisionTransformer(
        img_size=16, patch_size=4, embed_dim=D, depth=2, num_heads=2, num_register_tokens=REGISTERS
    ).eval()
    with torch.no_grad():  # random-init CLS and register tokens differ from the patches' mean
        net.cls_token.normal_(0.0, 1.0)
        net.register_tokens.normal_(0.0, 1.0)
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return net, images


def _by_hand(net: DinoVisionTransformer, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLS, mean of the 16 patch tokens), from the pre-norm token sequence [CLS, 2 registers, 16 patches]."""
    with torch.no_grad():
        prenorm = net.forward_features(images)["x_prenorm"]
        assert prenorm.shape == (3, 1 + REGISTERS + 16, D)
        normed = net.norm(prenorm)
        return normed[:, 0], normed[:, 1 + REGISTERS :].mean(dim=1)


def test_cli_avgpool_is_the_mean_of_patch_tokens_only(vit_and_images):
    net, images = vit_and_images
    cls, patch_mean = _by_hand(net, images)
    with torch.no_grad():
        avgpool = feature_fn(net, "avgpool")(images)
        both = feature_fn(net, "cls+avgpool")(images)
        cls_only = feature_fn(net, "cls")(images)
        all_tokens_mean = net.norm(net.forward_features(images)["x_prenorm"]).mean(dim=1)
    assert avgpool.shape == (3, D)
    torch.testing.assert_close(avgpool, patch_mean)
    assert not torch.allclose(avgpool, all_tokens_mean, atol=1e-3)  # CLS and registers are left out
    torch.testing.assert_close(cls_only, cls)
    torch.testing.assert_close(both, torch.cat([cls, patch_mean], dim=1))


def test_report_columns_select_cls_avgpool_and_both(vit_and_images):
    net, images = vit_and_images
    cls, patch_mean = _by_hand(net, images)
    features = backbone_features(net, with_avgpool=True)(images)
    columns = feature_columns("teacher", D)
    assert list(columns) == ["teacher/cls", "teacher/avgpool", "teacher/cls+avgpool"]
    torch.testing.assert_close(features[:, columns["teacher/cls"]], cls)
    torch.testing.assert_close(features[:, columns["teacher/avgpool"]], patch_mean)
    torch.testing.assert_close(features[:, columns["teacher/cls+avgpool"]], torch.cat([cls, patch_mean], dim=1))


def test_unknown_feature_kind_is_named():
    assert FEATURE_KINDS == ("cls", "avgpool", "cls+avgpool")
    with pytest.raises(ValueError, match="'mean'"):
        feature_fn(torch.nn.Identity(), "mean")
