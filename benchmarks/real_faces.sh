#!/usr/bin/env bash
# The whole pipeline on real faces, on this machine: build the UTKMask data set from ../shared (2,449 persons,
# 20% held out as the eval set), one small CPU search per task (mask, gender, age) and one for a single 18-class
# model (all), export each best trial, predict the eval set with the three task models composed and with the
# `all` model alone, and score both against the hidden answers. Logs, scores and the exports' configs and metrics
# go to benchmarks/results/real-faces-STAMP/ (the submissions too; git ignores them).
#   benchmarks/real_faces.sh            (about 15 minutes on 2 cores)
#   SETS="--set data.one_image_per_person=false --set train.epochs=4" STAMP=big benchmarks/real_faces.sh
#                                       (every photo each epoch: a larger budget)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-/tmp/utkmask}
STAMP=${STAMP:-$(date +%Y%m%d-%H%M%S)}
SETS=${SETS:-}
RESULTS=benchmarks/results/real-faces-$STAMP
TUNE=${TUNE:-.venv/bin/tune}
mkdir -p "$RESULTS"
[ -f "$DATA/train/train.csv" ] || .venv/bin/python ../shared/tools/make_utkmask.py \
    --chips ../shared/data/utkface-chips --out "$DATA" --eval-fraction 0.2
for task in mask gender age all; do
    space=search_spaces/cpu.yaml
    [ "$task" = age ] && space=search_spaces/cpu-age.yaml
    start=$(date +%s)
    "$TUNE" run "$space" --set task=$task $SETS --data "$DATA/train" --name "faces-$task-$STAMP" > "$RESULTS/run-$task.log" 2>&1
    "$TUNE" export "faces-$task-$STAMP" --out "exports/faces-$task-$STAMP" >> "$RESULTS/run-$task.log" 2>&1
    mkdir -p "$RESULTS/export-$task"
    cp "exports/faces-$task-$STAMP"/{metrics.json,config.yaml,classes.json} "$RESULTS/export-$task/"
    echo "$task: study + export $(( $(date +%s) - start )) s; $(tail -n 3 "$RESULTS/run-$task.log" | tr '\n' ' ')"
done
"$TUNE" predict --model "exports/faces-mask-$STAMP" --model "exports/faces-gender-$STAMP" \
    --model "exports/faces-age-$STAMP" --data "$DATA/eval" --out "$RESULTS/three-models.csv"
"$TUNE" predict --model "exports/faces-all-$STAMP" --data "$DATA/eval" --out "$RESULTS/all-model.csv"
"$TUNE" predict --model "exports/faces-mask-$STAMP" --model "exports/faces-gender-$STAMP" \
    --model "exports/faces-age-$STAMP" --data "$DATA/eval" --tta flip --out "$RESULTS/three-models-flip.csv"
for name in three-models three-models-flip all-model; do
    echo "== $name"
    "$TUNE" score "$RESULTS/$name.csv" "$DATA/eval_answers.csv" | tee "$RESULTS/score-$name.txt"
done
for task in mask gender age all; do
    echo "== $task: best trial's validation metrics"
    .venv/bin/python -c "import json,sys; m=json.load(open(sys.argv[1])); print({k: round(v, 4) for k, v in m.items() \
        if k.startswith('val_f1') or k == 'epoch'})" "exports/faces-$task-$STAMP/metrics.json"
done
