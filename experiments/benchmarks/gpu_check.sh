#!/usr/bin/env bash
# The GPU checks, in one run of about 8 minutes on one NVIDIA H200:
#
#   OUT=/some/folder bash experiments/benchmarks/gpu_check.sh     (from the repository root)
#
# Stages, in this order, each under its own time limit; a failing or timed-out stage is recorded
# in $OUT/bench.log and the next one still runs (the exit status is 1 if any failed):
#   tests      JAX_PLATFORMS=cuda pytest -q -x tests/glif_jax/kernels    -> $OUT/gpu_tests.log
#   glif       the GLIF layer alone: T in 2,4,6,16, paths scan,xla,pallas, shape 256,16,16,256,
#              no PyTorch                                -> $OUT/glif/results.md, results.json
#   training   glif_jax's training step against the PyTorch transcription's (eager, and
#              torch.compile): ResNet-19, T in 2,4,6, batch 64,128, float32 and bfloat16
#                                                        -> $OUT/results.md, results.json
#   max_batch  the largest batch that fits, glif_jax and PyTorch, T in 4,6, with and without
#              remat, each search in a fresh process     -> added to $OUT/results.md, .json
# The glif stage runs before the others because it writes its tables only at its end; the
# training benchmark writes its tables after every row, so a stage cut short by its limit still
# leaves what it measured. Progress and errors go to $OUT/bench.log: six files in all.
#
# The whole training grid does not fit in its budget: each glif_jax setting compiles a new step
# and each torch.compile row a new graph. Its rows run by priority (float32 before bfloat16, T
# increasing, batch increasing; glif_jax and PyTorch eager at every setting before any
# torch.compile row), and the rows past the budget are listed as skipped. Each max-batch search
# makes at least one probe (from batch 256); one out of time reports its bracket. The variables
# below move the limits, e.g.
# STAGES=training TRAIN_BUDGET_S=420 TRAIN_TIMEOUT_S=480 for a longer training grid alone.
#
# Python packages: the training benchmark imports experiments.train, which imports
# ml_collections (experiments.recipe, experiments.configs), tqdm (experiments.reporting),
# orbax-checkpoint (experiments.checkpointing), and grain and pillow (experiments.data, at
# import); with flax and optax, and their own imports: absl-py, etils, PyYAML, msgpack, rich,
# treescope, typing_extensions, tensorstore, humanize, simplejson, uvloop, protobuf,
# googleapis-common-protos, array_record, attrs, cloudpickle, portpicker, prometheus_client.
# Those the machine lacks come as wheels in a .whl folder at the repository root, installed
# below without an index. tensorflow_datasets is not imported.

set -u -o pipefail
export PYTHONUNBUFFERED=1

OUT="${OUT:?set OUT to the folder for the results}"
STAGES="${STAGES:-tests glif training max_batch}"
TESTS_TIMEOUT_S="${TESTS_TIMEOUT_S:-75}"
GLIF_TIMEOUT_S="${GLIF_TIMEOUT_S:-100}"
TRAIN_BUDGET_S="${TRAIN_BUDGET_S:-150}"
TRAIN_TIMEOUT_S="${TRAIN_TIMEOUT_S:-190}"
MAX_BATCH_BUDGET_S="${MAX_BATCH_BUDGET_S:-60}"
MAX_BATCH_TIMEOUT_S="${MAX_BATCH_TIMEOUT_S:-100}"
PYTHON="${PYTHON:-python3}"

mkdir -p "$OUT"
LOG="$OUT/bench.log"
: >"$LOG"
failed=()

note() {
  echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"
}

# run NAME LIMIT_S LOGFILE COMMAND...: COMMAND under a time limit, its output appended to LOGFILE.
run() {
  local name=$1 limit=$2 logfile=$3
  shift 3
  note "start $name (limit ${limit} s): $*"
  local began=$SECONDS rc=0
  # timeout signals the command's whole process group: the spawned search processes too.
  timeout --kill-after=15 "$limit" "$@" >>"$logfile" 2>&1 || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    note "$name: TIMED OUT after $((SECONDS - began)) s (what it wrote is kept)"
    failed+=("$name(timeout)")
  elif [ "$rc" -ne 0 ]; then
    note "$name: FAILED with exit status $rc after $((SECONDS - began)) s"
    failed+=("$name(rc=$rc)")
  else
    note "$name: done in $((SECONDS - began)) s"
  fi
}

wanted() {
  [[ " $STAGES " == *" $1 "* ]]
}

if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
  if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >>"$LOG" 2>&1; then
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    note "installed $(ls .whl/*.whl | wc -l) wheels from .whl into /tmp/site"
  else
    note "installing the wheels of .whl FAILED"
    failed+=("wheels")
  fi
fi
# The repository itself, for the spawned processes of the max-batch search as for the rest.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export JAX_PLATFORMS=cuda
# JAX and PyTorch share the device in the training stage: no JAX pool of most of it at start.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$PYTHON" - <<'EOF' 2>&1
import importlib

for name in ("jax", "jaxlib", "flax", "optax", "torch", "ml_collections", "orbax.checkpoint",
             "grain", "PIL", "tqdm", "experiments.train"):
    try:
        module = importlib.import_module(name)
        print(f"{name}: {getattr(module, '__version__', 'ok')}")
    except Exception as error:
        print(f"{name}: MISSING ({type(error).__name__}: {error})")
try:
    import jax
    print("jax devices:", jax.devices())
except Exception as error:
    print("jax devices: FAILED", error)
try:
    import torch
    print("torch cuda:", torch.cuda.is_available(), torch.version.cuda)
except Exception as error:
    print("torch: FAILED", error)
EOF
} >>"$LOG"

if wanted tests; then
  run tests "$TESTS_TIMEOUT_S" "$OUT/gpu_tests.log" \
    env JAX_PLATFORMS=cuda "$PYTHON" -m pytest -q -x -p no:cacheprovider tests/glif_jax/kernels
fi

if wanted glif; then
  run glif "$GLIF_TIMEOUT_S" "$LOG" \
    "$PYTHON" -m experiments.benchmarks --parts glif --no-torch --time-steps 2,4,6,16 \
    --paths scan,xla,pallas --shape 256,16,16,256 --repeats 10 --out "$OUT/glif"
fi

if wanted training; then
  run training "$TRAIN_TIMEOUT_S" "$LOG" \
    "$PYTHON" -m experiments.benchmarks --parts training --out "$OUT" \
    --train-model resnet19 --train-time-steps 2,4,6 --train-batch 64,128 \
    --train-dtypes float32,bfloat16 --train-repeats 5 --train-torch eager,compiled \
    --train-budget-s "$TRAIN_BUDGET_S"
fi

# A process of its own, after the training grid's has ended and handed back its device memory.
if wanted max_batch; then
  run max_batch "$MAX_BATCH_TIMEOUT_S" "$LOG" \
    "$PYTHON" -m experiments.benchmarks --parts max_batch --append --out "$OUT" \
    --train-model resnet19 --max-batch-time-steps 4,6 --max-batch-start 256 \
    --max-batch-upper 8192 --max-batch-budget-s "$MAX_BATCH_BUDGET_S"
fi

# Each returned file must stay under 16 MiB.
for f in "$LOG" "$OUT/gpu_tests.log"; do
  if [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt 15000000 ]; then
    tail -c 15000000 "$f" >"$f.tail" && mv "$f.tail" "$f"
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  note "stages that failed: ${failed[*]}"
  exit 1
fi
note "every stage passed"
