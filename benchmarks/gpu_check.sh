#!/usr/bin/env bash
# The CUDA path end to end on a machine with one NVIDIA GPU, in under 10 minutes:
#
#   1. install alexnet from a wheel built beforehand (no build on the GPU machine's clock)
#   2. the device-independent training and evaluation tests on --device cuda
#      (ALEXNET_TEST_DEVICE=cuda, honoured through tests/devices.py)
#   3. alexnet train --recipe cifar10-fast --time 60s --device cuda: top-1 and images/s
#   4. alexnet bench inference and alexnet bench train on cuda
#   5. (optional, --fashion-mnist ROOT) the d2l chapter's Fashion-MNIST recipe, 10 epochs
#
# Before, on any machine with the source tree:
#   python -m pip wheel --no-deps -w dist .          # or: python -m build --wheel
# Then, on the GPU machine (torch with CUDA and alexnet's dependencies installed):
#   benchmarks/gpu_check.sh --data ROOT [--wheel dist/alexnet-*.whl] [--out DIR] \
#       [--fashion-mnist ROOT] [--time 60s]
# ROOT: CIFAR-10 as an image folder, ROOT/train/<class>/*.jpg (and ROOT/test/<class>/ for a
# held-out test split): e.g. ../shared/data/cifar10-train-jpg.tar.gz unpacked, with 500 images
# of each class moved to test/. Every log and a summary go to --out (default gpu-check-DATE/).
set -euo pipefail
cd "$(dirname "$0")/.."

data="" wheel="" out="" fashion="" budget="60s"
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data="$2"; shift 2 ;;
    --wheel) wheel="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --fashion-mnist) fashion="$2"; shift 2 ;;
    --time) budget="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1; see --help" >&2; exit 2 ;;
  esac
done
if [ -z "$data" ] || [ ! -d "$data/train" ]; then
  echo "gpu_check: --data ROOT must hold ROOT/train/<class>/ (CIFAR-10 as JPEGs); see --help" >&2
  exit 2
fi
out="${out:-gpu-check-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
summary="$out/summary.txt"
py="${PYTHON:-python3}"
start=$(date +%s)

say() { echo "$*" | tee -a "$summary"; }
step() { say ""; say "== $* ($(( $(date +%s) - start )) s in)"; }

step "the machine"
nvidia-smi -L | tee -a "$summary" || { say "no nvidia-smi: not a GPU machine"; exit 2; }
$py -c "import torch; assert torch.cuda.is_available(), 'torch has no CUDA here'; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" \
  | tee -a "$summary"

step "1. install from the wheel"
if [ -z "$wheel" ]; then  # none given: the newest in dist/, else build one now (counted)
  wheel=$(ls -t dist/alexnet-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    say "no wheel in dist/: building one now (build it beforehand to keep it off the clock)"
    $py -m pip wheel -q --no-deps -w dist . >"$out/wheel.log" 2>&1
    wheel=$(ls -t dist/alexnet-*.whl | head -1)
  fi
fi
# dependencies from an index where there is one, else those already installed
$py -m pip install -q --force-reinstall --no-deps "$wheel" >"$out/install.log" 2>&1
$py -m pip install -q "$wheel" >>"$out/install.log" 2>&1 || say "(no index: installed dependencies kept)"
(cd /tmp && $py -c "import alexnet, sys; print('alexnet', alexnet.__version__, 'from', alexnet.__file__)") \
  | tee -a "$summary"

step "2. device-independent training and evaluation tests on cuda"
# run against the installed wheel: tests import alexnet from site-packages, not src/
# (needs pytest: pip install the wheel's [dev] extra, or pytest alone)
ALEXNET_TEST_DEVICE=cuda timeout 200 $py -m pytest -q -p no:cacheprovider -m "not slow" \
  tests/training/test_train.py tests/training/test_final_evaluation.py >"$out/tests.log" 2>&1 \
  && say "tests passed: $(tail -1 "$out/tests.log")" \
  || say "TESTS FAILED: $(tail -1 "$out/tests.log") (see $out/tests.log)"
# the time budget's whole runs too (two 20 s runs on digits)
ALEXNET_TEST_DEVICE=cuda timeout 120 $py -m pytest -q -p no:cacheprovider \
  tests/training/test_time_budget.py >"$out/tests-time.log" 2>&1 \
  && say "time budget tests passed: $(tail -1 "$out/tests-time.log")" \
  || say "TIME BUDGET TESTS FAILED: $(tail -1 "$out/tests-time.log") (see $out/tests-time.log)"

step "3. cifar10-fast --time $budget on cuda"
timeout 300 $py -m alexnet train --recipe cifar10-fast --dataset imagefolder --data "$data" \
  --time "$budget" --device cuda --run-dir "$out/runs" --name cifar10-fast-cuda --no-progress \
  >"$out/train.log" 2>&1 || say "TRAINING FAILED (see $out/train.log)"
grep -E "^time |test top-1|final val top-1|wall time|time budget" "$out/train.log" | tee -a "$summary" || true

step "4. bench inference and bench train on cuda"
timeout 120 $py -m alexnet bench inference --device cuda >"$out/bench-inference.log" 2>&1 \
  || say "BENCH INFERENCE FAILED (see $out/bench-inference.log)"
tail -8 "$out/bench-inference.log" | tee -a "$summary"
timeout 150 $py -m alexnet bench train --device cuda --data "$data" --cache-dir "$out/cache" \
  >"$out/bench-train.log" 2>&1 || say "BENCH TRAIN FAILED (see $out/bench-train.log)"
tail -8 "$out/bench-train.log" | tee -a "$summary"

if [ -n "$fashion" ]; then
  step "5. the d2l chapter's Fashion-MNIST recipe, 10 epochs, on cuda"
  timeout 900 $py -m alexnet train --recipe fashion-mnist-d2l --data "$fashion" --device cuda \
    --run-dir "$out/runs" --name fashion-mnist-d2l-cuda --no-progress >"$out/fashion.log" 2>&1 \
    || say "FASHION-MNIST FAILED (see $out/fashion.log)"
  grep -E "test top-1|wall time" "$out/fashion.log" | tee -a "$summary" || true
fi

step "done: $(( $(date +%s) - start )) s; summary in $summary"
