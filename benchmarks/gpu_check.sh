#!/usr/bin/env bash
# The checks that need a GPU, in one run of under 5 minutes, so that a short
# loan of a GPU is spent well:
#   1. the Triton kernels compiled and run on CUDA tensors (the tests marked
#      triton, which otherwise run in Triton's interpreter), CUDA-graph capture
#      included (the tiled top-k kernel's too), and the GPU loops of the
#      reference path;
#   2. benchmarks/sparsemax.py --device gpu (Triton path, reference path,
#      entmax, torch.softmax; sparsemax and top-k sparsemax, the tiled top-k
#      kernel at 16x65536 and 4096x32768; float32 and bfloat16; JAX on the
#      GPU when jax[cuda] is installed).
# Needs an environment with a CUDA build of torch (which brings triton),
# entmax, and the test extra: PYTHON=/path/to/python bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(), torch.__version__)"
export SPARSECORE_TEST_TRITON=cuda TRITON_INTERPRET=0
timeout 160 "$PYTHON" -m pytest -q -x -p no:cacheprovider \
  tests/test_triton.py tests/test_bad_input.py tests/test_properties.py tests/test_gpu_loops.py \
  -k "triton or gpu" "$@"
frameworks=(torch)
if "$PYTHON" -c "import jax, sys; sys.exit(0 if jax.devices()[0].platform == 'gpu' else 1)" 2>/dev/null; then
  frameworks+=(jax)
fi
timeout 120 "$PYTHON" benchmarks/sparsemax.py --device gpu --budget 0.15 --frameworks "${frameworks[@]}"
