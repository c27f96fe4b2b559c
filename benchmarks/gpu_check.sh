#!/usr/bin/env bash
# Every GPU check in one call, for the first GPU lent to this project (none has been so far): the GPU tests
# (tests/test_gpu.py: bf16 + channels_last, four trials sharing one GPU, tune predict there) and the throughput
# benchmark, about 6 minutes on one GPU. Writes benchmarks/results/gpu-tests-<GPU>.txt and
# throughput-<GPU>.json, and copies both to $OUT when it is set (the device tool's folder that comes back).
#
#   here:   python ../shared/tools/gpu_wheelhouse.py .whl       (Ray, MLflow, Optuna, ...: 62 MiB, git-ignored)
#   there:  bash benchmarks/gpu_check.sh                         (the device tool, with carry: [".whl"])
#
# The machine there reaches no registry: what its Python lacks is installed from the carried wheels.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if ! python3 -c "import ray.tune, mlflow, optuna, albumentations" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))") || exit 1
results=benchmarks/results
status=0
timeout 300 python3 -m pytest -m gpu tests/test_gpu.py -v -p no:cacheprovider 2>&1 | tee "$results/gpu-tests-$gpu.txt" \
  || status=1
python3 -m tune data demo /tmp/gpu-demo --persons 300 >/dev/null || exit 1
timeout 150 python3 benchmarks/throughput.py --data /tmp/gpu-demo/train --seconds 6 || status=1
if [ -n "${OUT:-}" ]; then cp "$results/gpu-tests-$gpu.txt" "$results/throughput-$gpu.json" "$OUT"/ 2>/dev/null; fi
exit $status
