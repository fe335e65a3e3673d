#!/usr/bin/env bash
# The first thing to run on a machine with one GPU (docs/benchmarks.md, "First contact with a GPU"):
# CUDA correctness smoke, the ViT-S/B/L throughput ladder and peak memory, in at most 10 minutes; the
# markdown rows for benchmarks/RESULTS.md go to OUTPUT (default gpu_first_contact.md) and to stdout.
#
#   bash benchmarks/gpu_first_contact.sh [OUTPUT.md] [more driver options, e.g. --budget-s 400]
#
# The driver time-boxes each stage inside a 540 s budget; `timeout` is the hard cap: at 590 s it sends
# SIGINT, on which the driver writes what it measured so far, and kills 20 s later if it has not ended.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
output=${1:-gpu_first_contact.md}
shift $(($# > 0 ? 1 : 0))
python=${PYTHON:-python3}
if ! "$python" -c "import torch, omegaconf; import dinolite" 2>/dev/null; then
    "$python" -c "import torch, omegaconf; import dinolite"  # show which import fails
    echo "error: $python cannot import torch, omegaconf and dinolite from $(pwd) (docs/install.md)" >&2
    exit 2
fi
if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: torch.cuda.is_available() is False: this script is for a GPU machine" \
        "(on CPU: python benchmarks/gpu_first_contact.py --device cpu --quick)" >&2
    exit 2
fi
export PYTHONUNBUFFERED=1
command="bash benchmarks/gpu_first_contact.sh $output${*:+ $*}"
timeout --signal=INT --kill-after=20 590 \
    "$python" benchmarks/gpu_first_contact.py --device cuda --output "$output" --command "$command" "$@"
