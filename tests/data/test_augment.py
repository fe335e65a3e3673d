import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

import dinolite.data.augment as augment
from dinolite.config import CropsConfig
from dinolite.data.augment import MultiCropAugmentation

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _image(h=60, w=80, seed=0):
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_shapes_dtypes_and_value_ranges():
    aug = MultiCropAugmentation(32, 16, 3)
    out = aug(_image(), generator=torch.Generator().manual_seed(0))
    assert [c.shape for c in out["global_crops"]] == [(3, 32, 32)] * 2
    assert [c.shape for c in out["local_crops"]] == [(3, 16, 16)] * 3
    for crop in out["global_crops"] + out["local_crops"]:
        assert crop.dtype == torch.float32
        assert (crop >= (0 - MEAN) / STD - 1e-5).all() and (crop <= (1 - MEAN) / STD + 1e-5).all()


def test_generator_makes_it_reproducible_and_inputs_agree():
    aug = MultiCropAugmentation(32, 16, 2)
    img = _image()
    a = aug(img, generator=torch.Generator().manual_seed(7))
    b = aug(Image.fromarray(img.permute(1, 2, 0).numpy()), generator=torch.Generator().manual_seed(7))
    c = aug(img, generator=torch.Generator().manual_seed(8))
    assert all(
        torch.equal(x, y) for x, y in zip(a["global_crops"] + a["local_crops"], b["global_crops"] + b["local_crops"])
    )
    assert not torch.equal(a["global_crops"][0], c["global_crops"][0])
    gray = aug(img[:1], generator=torch.Generator().manual_seed(7))  # 1-channel input becomes RGB
    assert gray["global_crops"][0].shape == (3, 32, 32)


def test_from_config_reads_the_crops_section():
    cfg = CropsConfig(global_crops_size=48, local_crops_size=24, local_crops_number=5, blur_p_global2=0.3)
    aug = MultiCropAugmentation.from_config(cfg)
    assert (aug.global_crops_size, aug.local_crops_size, aug.local_crops_number) == (48, 24, 5)
    assert aug.global2.blur_p == 0.3 and aug.global1.blur_p == 1.0 and aug.local.blur_p == 0.5
    assert aug.global2.solarize_p == 0.2 and aug.global1.solarize_p == 0.0
    with pytest.raises(ValueError, match="grayscale_p"):
        MultiCropAugmentation(grayscale_p=1.5)


@pytest.fixture
def one_thread():
    # Tiny crops: intra-op threads only add pool round trips on a shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_empirical_blur_solarize_grayscale_rates(monkeypatch, one_thread):
    calls = {"blur": 0, "solarize": 0, "gray": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(augment, "gaussian_blur", counting("blur", augment.gaussian_blur))
    monkeypatch.setattr(augment, "solarize", counting("solarize", augment.solarize))
    monkeypatch.setattr(augment.TF, "rgb_to_grayscale", counting("gray", TF.rgb_to_grayscale))
    aug = MultiCropAugmentation(8, 8, 1)
    img = _image(16, 16)
    generator = torch.Generator().manual_seed(0)
    n = 1200
    rates = {}
    for name, recipe in (("global1", aug.global1), ("global2", aug.global2), ("local", aug.local)):
        for key in calls:
            calls[key] = 0
        for _ in range(n):
            aug.crop(img, recipe, generator)
        rates[name] = {key: value / n for key, value in calls.items()}
    tol = 0.06  # > 4 binomial standard deviations at n=1200
    assert rates["global1"]["blur"] == 1.0  # the stated probability, not the official inverted 0.0
    assert abs(rates["global2"]["blur"] - 0.1) < tol
    assert abs(rates["local"]["blur"] - 0.5) < tol
    assert abs(rates["global2"]["solarize"] - 0.2) < tol
    assert rates["global1"]["solarize"] == rates["local"]["solarize"] == 0.0
    for name in rates:
        assert abs(rates[name]["gray"] - 0.2) < tol


# -- DINOv3's Gram teacher crops (crops.gram_teacher_crops_size / gram_teacher_no_distortions) --------------


def _crops(aug: MultiCropAugmentation, seed: int = 3) -> dict[str, list[torch.Tensor]]:
    return aug(_image(), generator=torch.Generator().manual_seed(seed))


def test_gram_teacher_crops_keep_every_random_draw_of_the_student_crops():
    """At the student's own size and without distortions, the student's crops are bit for bit those of a
    run without Gram teacher crops (same draws in the same order), and the Gram teacher's are the same
    regions without the colour distortions."""
    plain = _crops(MultiCropAugmentation(32, 16, 2))
    gram = _crops(MultiCropAugmentation(32, 16, 2, gram_teacher_crops_size=32, gram_teacher_no_distortions=True))
    for key in ("global_crops", "local_crops"):
        assert all(torch.equal(a, b) for a, b in zip(plain[key], gram[key]))
    geometry_only = dict(color_jitter_p=0.0, grayscale_p=0.0, blur_p_global1=0.0, blur_p_global2=0.0)
    undistorted = _crops(MultiCropAugmentation(32, 16, 2, solarize_p_global2=0.0, **geometry_only))
    assert all(torch.equal(a, b) for a, b in zip(undistorted["global_crops"], gram["gram_teacher_crops"]))
    assert not torch.equal(gram["gram_teacher_crops"][0], gram["global_crops"][0])  # global 1 is always blurred


def test_with_distortions_the_gram_teacher_sees_the_student_crop_at_its_size():
    same = _crops(MultiCropAugmentation(32, 16, 2, gram_teacher_crops_size=32))
    assert all(torch.equal(a, b) for a, b in zip(same["global_crops"], same["gram_teacher_crops"]))
    larger = _crops(MultiCropAugmentation(32, 16, 2, gram_teacher_crops_size=64))
    assert [c.shape for c in larger["gram_teacher_crops"]] == [(3, 64, 64)] * 2
    assert [c.shape for c in larger["global_crops"]] == [(3, 32, 32)] * 2
    for student, teacher in zip(larger["global_crops"], larger["gram_teacher_crops"]):
        # both are resized from one distorted 64 px crop: the teacher's, brought to 32 px, is the student's
        again = TF.resize(teacher, [32, 32], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        torch.testing.assert_close(again, student)


def test_larger_undistorted_gram_teacher_crops_show_the_student_crops_region():
    geometry_only = dict(color_jitter_p=0.0, grayscale_p=0.0, blur_p_global1=0.0, blur_p_global2=0.0)
    aug = MultiCropAugmentation(
        32, 16, 2, solarize_p_global2=0.0, gram_teacher_crops_size=64, gram_teacher_no_distortions=True, **geometry_only
    )
    out = _crops(aug)
    for student, teacher in zip(out["global_crops"], out["gram_teacher_crops"]):
        assert teacher.shape == (3, 64, 64)
        # one 64 px cut (uint8) kept for the teacher and resized to 32 px for the student: the same region
        cut = (teacher * STD + MEAN).mul(255).round().to(torch.uint8)
        again = TF.resize(cut, [32, 32], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        torch.testing.assert_close((again.float() / 255 - MEAN) / STD, student)


def test_gram_teacher_crops_from_the_config_and_bad_sizes():
    cfg = CropsConfig(global_crops_size=32, gram_teacher_crops_size=48, gram_teacher_no_distortions=True)
    aug = MultiCropAugmentation.from_config(cfg)
    assert (aug.gram_teacher_crops_size, aug.gram_teacher_no_distortions) == (48, True)
    assert "gram_teacher_crops" not in _crops(MultiCropAugmentation(32, 16, 2))
    with pytest.raises(ValueError, match="gram_teacher_crops_size"):
        MultiCropAugmentation(gram_teacher_crops_size=0)
