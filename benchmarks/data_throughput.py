"""Images/s of the DINOv2 2+8 multi-crop (224/96) per core: dinolite's uint8-tensor pipeline versus a
straightforward PIL + torchvision-v1 implementation of the same recipe, on the same JPEGs, same run.

    python benchmarks/data_throughput.py [--images 40] [--repeats 3]

Test images: scikit-learn's two sample photos (china.jpg, flower.jpg, shipped offline) cut into
random 500x375 crops (ImageNet's typical size) and re-encoded as JPEG quality 90. One thread, one
process: the figure is per DataLoader worker (= per core). Both pipelines include JPEG decoding.
"""

from __future__ import annotations

import argparse
import io
import platform
import time

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

from dinolite.data.augment import MultiCropAugmentation
from dinolite.data.loader import decode_image


def make_jpegs(n: int, seed: int = 0) -> list[bytes]:
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]  # 640x427
    out = []
    for i in range(n):
        photo = photos[i % 2]
        left, top = int(rng.integers(0, photo.width - 500 + 1)), int(rng.integers(0, photo.height - 375 + 1))
        buf = io.BytesIO()
        photo.crop((left, top, left + 500, top + 375)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def pil_reference() -> callable:
    """The recipe the way reference implementations write it: PIL images, torchvision v1 transforms."""
    normalize = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    colour = T.Compose([T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), T.RandomGrayscale(p=0.2)])

    def geometry(size: int, scale: tuple[float, float]) -> T.Compose:
        return T.Compose(
            [
                T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
                T.RandomHorizontalFlip(),
            ]
        )

    def blur(p: float) -> T.RandomApply:
        return T.RandomApply([T.GaussianBlur(9, sigma=(0.1, 2.0))], p=p)

    global1 = T.Compose([geometry(224, (0.32, 1.0)), colour, blur(1.0), normalize])
    global2 = T.Compose([geometry(224, (0.32, 1.0)), colour, blur(0.1), T.RandomSolarize(128, p=0.2), normalize])
    local = T.Compose([geometry(96, (0.05, 0.32)), colour, blur(0.5), normalize])

    def run(data: bytes) -> dict:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        return {"global_crops": [global1(img), global2(img)], "local_crops": [local(img) for _ in range(8)]}

    return run


def ours() -> callable:
    aug = MultiCropAugmentation()  # DINOv2 defaults: 224/96, 2+8 crops
    generator = torch.Generator().manual_seed(0)
    return lambda data: aug(decode_image(data), generator=generator)


def images_per_second(fn: callable, images: list[bytes], repeats: int) -> float:
    fn(images[0])  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for data in images:
            fn(data)
        best = max(best, len(images) / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3, help="best of N passes (shared machines are noisy)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = make_jpegs(args.images)
    # Interleave the two so that both see the same background load.
    results = {"pil": [], "dinolite": []}
    for _ in range(args.repeats):
        results["pil"].append(images_per_second(pil_reference(), images, 1))
        results["dinolite"].append(images_per_second(ours(), images, 1))
    pil, fast = max(results["pil"]), max(results["dinolite"])
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread")
    print(f"{len(images)} JPEGs 500x375, 2x224 + 8x96 crops, best of {args.repeats}")
    print(f"PIL reference : {pil:7.1f} img/s per core")
    print(f"dinolite      : {fast:7.1f} img/s per core  ({fast / pil:.2f}x)")


if __name__ == "__main__":
    main()
