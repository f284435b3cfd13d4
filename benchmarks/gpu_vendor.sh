#!/usr/bin/env bash
# Prepare .gpu-vendor/: the pure-Python and binary wheels gpu_check.py needs beyond what an offline GPU box
# has (torch, torchvision, numpy, yaml, pillow, scipy, timm), unpacked so that gpu_check.py can put the
# folder on sys.path. Run it here (it needs PyPI), then copy the checkout with .gpu-vendor/ to the box:
#
#     benchmarks/gpu_vendor.sh [PYTHON_VERSION]        # default 3.12 (the GPU box's Python)
#
# HARDSEG_GPU_VENDOR=DIR writes elsewhere (gpu_check.py reads the same variable); PIP=... picks the pip.
# Fails if the folder is over 64 MiB.
set -euo pipefail
PYVER="${1:-3.12}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${HARDSEG_GPU_VENDOR:-$REPO/.gpu-vendor}"
PIP="${PIP:-pip}"
WHEELS="$(mktemp -d)"
trap 'rm -rf "$WHEELS"' EXIT

# pydantic pins its pydantic-core; the rest are pydantic's runtime dependencies.
"$PIP" download --quiet --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --dest "$WHEELS" "pydantic>=2.7,<3" typing-inspection annotated-types typing_extensions
# segmentation-models-pytorch for `--model smp:...` (pure Python; its dependencies timm, huggingface-hub,
# safetensors and tqdm come with the box's timm), without pulling torch.
"$PIP" download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux2014_x86_64 --dest "$WHEELS" "segmentation-models-pytorch==${SMP_VERSION:-0.6.0}"

rm -rf "$OUT"
mkdir -p "$OUT"
for whl in "$WHEELS"/*.whl; do
    python3 -m zipfile -e "$whl" "$OUT"
done
rm -rf "$OUT"/*.dist-info/RECORD
echo "$PYVER" > "$OUT/PYTHON_VERSION"
ls "$WHEELS" | sed 's/^/  /'
size_kib=$(du -sk "$OUT" | cut -f1)
echo "$OUT: $((size_kib / 1024)) MiB"
if [ "$size_kib" -gt $((64 * 1024)) ]; then
    echo "error: $OUT is over 64 MiB" >&2
    exit 1
fi
