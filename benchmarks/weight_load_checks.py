"""What the load-side budget checks cost next to the loads they guard (issue 24, item 4).

For a randomly initialised DINOv2 backbone of each ``--arch`` (saved once into a temporary folder), times
(median over ``--repeats`` after a warm-up) in the same process:

* ``pth``: ``torch.load(weights_only=True)`` of its ``.pth``, and ``storage``:
  :func:`dinolite.checkpoint.tensor_files.check_tensor_storage` on what it returned;
* ``dcp``: :func:`dinolite.checkpoint.load_consolidated_state_dict` of a DCP checkpoint of the same
  tensors, and ``budget``: :func:`dinolite.checkpoint.integrity.check_metadata_budget` on its metadata;
* ``record``: :func:`dinolite.export.spec_checks.check_spec_fields` on the backbone's record.

The ratios ``storage / pth`` and ``budget / dcp`` are the figures to trust on a shared machine.

Usage::

    python benchmarks/weight_load_checks.py --arch vit_small vit_base --repeats 5 --output checks.json
    python benchmarks/weight_load_checks.py --quick
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dinolite.checkpoint import load_consolidated_state_dict  # noqa: E402
from dinolite.checkpoint.integrity import check_metadata_budget  # noqa: E402
from dinolite.checkpoint.reader import no_single_process_warning  # noqa: E402
from dinolite.checkpoint.safe_metadata import read_dcp_metadata  # noqa: E402
from dinolite.checkpoint.tensor_files import check_tensor_storage  # noqa: E402
from dinolite.export.spec import spec_from_backbone  # noqa: E402
from dinolite.export.spec_checks import check_spec_fields  # noqa: E402
from dinolite.io import write_json_atomic  # noqa: E402
from dinolite.models import ARCHITECTURES, DinoVisionTransformer  # noqa: E402


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(arch: str, repeats: int, folder: Path, depth: int | None = None) -> dict:
    dims = {**ARCHITECTURES[arch], **({"depth": depth} if depth else {})}
    model = DinoVisionTransformer(img_size=224, patch_size=14, init_values=1e-5, **dims)
    state = model.state_dict()
    pth = folder / f"{arch}.pth"
    torch.save(state, pth)
    run = folder / arch
    with no_single_process_warning():
        dcp.save({"model": {"teacher": {"backbone": state}}}, checkpoint_id=str(run))
    (run / "state.json").write_text(json.dumps({"iteration": 1, "batches_consumed": 1, "world_size": 1}))
    metadata = read_dcp_metadata(run / ".metadata")
    keys = [k for k in metadata.state_dict_metadata if k.startswith("model.teacher.backbone.")]
    loaded = torch.load(pth, map_location="cpu", weights_only=True)
    spec = spec_from_backbone(model, train_img_size=224)
    result = {
        "arch": arch,
        "depth": dims["depth"],
        "parameters_M": round(sum(v.numel() for v in state.values()) / 1e6, 1),
        "tensors": len(state),
        "pth_ms": _median_ms(lambda: torch.load(pth, map_location="cpu", weights_only=True), repeats),
        "storage_ms": _median_ms(lambda: check_tensor_storage(loaded, str(pth)), repeats),
        "dcp_ms": _median_ms(lambda: load_consolidated_state_dict(run), repeats),
        "budget_ms": _median_ms(lambda: check_metadata_budget(run, metadata, keys), repeats),
        "record_ms": _median_ms(lambda: check_spec_fields(spec, "record"), repeats),
    }
    result["storage_over_pth"] = result["storage_ms"] / result["pth_ms"]
    result["budget_over_dcp"] = result["budget_ms"] / result["dcp_ms"]
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["vit_small"], choices=sorted(ARCHITECTURES))
    parser.add_argument("--depth", type=int, default=None, help="override the architecture's depth")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="one ViT-S block, one repeat (a smoke run)")
    parser.add_argument("--output", default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.arch, args.depth, args.repeats = ["vit_small"], 1, 1
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for arch in args.arch:
            results.append(measure(arch, args.repeats, Path(folder), args.depth))
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in results[-1].items()}))
    if args.output:
        write_json_atomic(args.output, {"machine": platform.platform(), "torch": torch.__version__, "results": results})
    return results


if __name__ == "__main__":
    main()
