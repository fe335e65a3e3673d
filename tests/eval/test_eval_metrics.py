import pytest
import torch

from dinolite.eval.metrics import confusion_matrix, segmentation_scores


def test_hand_computed_iou_and_pixel_accuracy():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 2]])
    conf = confusion_matrix(pred, target, num_classes=4)
    assert conf.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    scores = segmentation_scores(conf)
    # IoU: class0 1/(2+2-1)=1/3, class1 2/(2+3-2)=2/3, class2 1/(2+1-1)=1/2, class3 absent (skipped).
    assert scores["per_class_iou"][:3] == pytest.approx([100 / 3, 200 / 3, 50.0])
    assert scores["per_class_iou"][3] is None
    assert scores["mIoU"] == pytest.approx((100 / 3 + 200 / 3 + 50.0) / 3)
    assert scores["pixel_acc"] == pytest.approx(100 * 4 / 6)


def test_target_outside_class_count_is_rejected():
    with pytest.raises(ValueError, match="target class 5 outside"):
        confusion_matrix(torch.tensor([0]), torch.tensor([5]), num_classes=3)
