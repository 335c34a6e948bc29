#!/usr/bin/env bash
# GPU check for `sisa train --device cuda`: determinism (two runs, same sha256s) and timings.
# Runs from the repository root with PYTHONPATH (no install needed): bash benchmarks/gpu_train_check.sh
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
DEV=${DEV:-cuda}
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null | tee $OUT/gpu.txt
python -c "import torch, torchvision, sklearn, pyarrow; print(torch.__version__, torchvision.__version__, torch.cuda.is_available())"
run() { local name=$1; shift; local t0=$(date +%s.%N); python -m sisa train --device $DEV --workdir /tmp/ws-$name --json "$@" > $OUT/$name.json 2> $OUT/$name.err; local rc=$?; local t1=$(date +%s.%N); echo "$name rc=$rc wall=$(python -c "print(round($t1-$t0,2))") $(python -c "import json;d=json.load(open('$OUT/$name.json'));print('acc',round(d['accuracy'],4),'train_s',d['train_seconds'],'total_s',d['seconds'])" 2>/dev/null)" | tee -a $OUT/summary.txt; [ $rc = 0 ] || tail -5 $OUT/$name.err; }
run digits-a
run digits-b
python - <<'PY' | tee -a $OUT/summary.txt
import json
a = json.load(open("/tmp/ws-digits-a/checkpoints/manifest.json"))
b = json.load(open("/tmp/ws-digits-b/checkpoints/manifest.json"))
sa = [(r["shard"], r["slice"], r["sha256"]) for r in a["checkpoints"]]
sb = [(r["shard"], r["slice"], r["sha256"]) for r in b["checkpoints"]]
print("digits cuda two runs identical sha256s:", sa == sb, len(sa), "checkpoints; env", a["environment"])
PY
FM=${FM:-fashion-mnist:.gpu/fmnist}  # the four IDX .gz files, carried to the GPU machine
run fm-cnn-s1 --data $FM --model cnn --shards 1 --slices 1
run fm-cnn-s8 --data $FM --model cnn --shards 8
run fm-mlp-s1 --data $FM --model mlp --shards 1 --slices 1
run fm-mlp-s8 --data $FM --model mlp --shards 8
run fm-resnet18-s8 --data $FM --model resnet18 --shards 8 --slices 1 --epochs 1
# several shards at once as one vectorised model: exactness and isolation on the GPU, then timings
python benchmarks/vectorised.py --device $DEV --data $FM --model cnn --widths 1,8 --out $OUT --name vectorised-cnn | tee -a $OUT/summary.txt
python benchmarks/vectorised.py --device $DEV --data $FM --model mlp --widths 1,8 --out $OUT --name vectorised-mlp | tee -a $OUT/summary.txt
