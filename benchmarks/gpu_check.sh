#!/usr/bin/env bash
# Every GPU check in one call, for the first GPU lent to this project (none has been so far): the GPU tests
# (tests/test_gpu.py: bf16 + channels_last, four trials sharing one GPU, tune predict there), the throughput
# benchmark, and a pretrained study (all.yaml: efficientnet_lite0/1/2 with ImageNet weights) on real faces to a
# scored submission; about 12 minutes on one GPU. Writes benchmarks/results/gpu-tests-<GPU>.txt,
# throughput-<GPU>.json and gpu-pretrained-<GPU>.txt, and copies them to $OUT when it is set (the device tool's
# folder that comes back).
#
#   here:   python ../shared/tools/gpu_wheelhouse.py .whl       (Ray, MLflow, Optuna, ...: 62 MiB, git-ignored)
#           bash benchmarks/gpu_check.sh --prepare               (.gpu/: the face chips, make_utkmask.py and the
#                                                                 converted weights in fp16, git-ignored)
#   there:  bash benchmarks/gpu_check.sh --install               (the device tool, with carry: [".whl"])
#           bash benchmarks/gpu_check.sh                         (at once, while it is warm: carry [".gpu"])
#
# The machine there reaches no registry: what its Python lacks is installed from the carried wheels into
# /tmp/site, which the second call finds; the ImageNet weights travel converted, so no package is needed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if [ "${1:-}" = "--prepare" ]; then
  rm -rf .gpu && mkdir -p .gpu/weights && cp -r ../shared/data/utkface-chips ../shared/tools/make_utkmask.py .gpu/ \
    && .venv/bin/python -c "
from safetensors.torch import load_file, save_file
from trainables import weights
for b in ('efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2'):  # in fp16 to fit the 64 MiB carried
    file = weights.local_file(b).file
    save_file({k: v.half() for k, v in load_file(str(file)).items()}, f'.gpu/weights/{file.name}')" && du -sh .gpu
  exit $?
fi
if [ "${1:-}" = "--install" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  exit $?
fi
if ! python3 -c "import ray.tune, mlflow, optuna, albumentations" 2>/dev/null; then
  [ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    || exit 1
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
if [ -d .gpu ]; then  # a pretrained study on real faces, to a scored submission
  export TUNE_WEIGHTS_DIR=$PWD/.gpu/weights
  report="$results/gpu-pretrained-$gpu.txt"
  {
    python3 .gpu/make_utkmask.py --chips .gpu/utkface-chips --out /tmp/gpu-faces --eval-fraction 0.2 >/dev/null \
      && timeout 420 python3 -m tune run search_spaces/all.yaml --data /tmp/gpu-faces/train --time-budget 6m \
           --name gpu-pretrained \
      && python3 -m tune export gpu-pretrained --ensemble --out /tmp/gpu-export \
      && python3 -m tune predict --model /tmp/gpu-export --data /tmp/gpu-faces/eval --tta flip --out /tmp/gpu-sub.csv \
      && python3 -m tune score /tmp/gpu-sub.csv /tmp/gpu-faces/eval_answers.csv
  } 2>&1 | tee "$report"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if [ -n "${OUT:-}" ]; then cp "$results"/gpu-*"$gpu"* "$results/throughput-$gpu.json" "$OUT"/ 2>/dev/null; fi
exit $status
