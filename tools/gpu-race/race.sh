#!/usr/bin/env bash
# The speed race of issue 6, on the GPU machine: PEFT and ortlora on the same model, settings and GPU, in one run.
#   bash tools/gpu-race/race.sh SHAPE [DTYPE ...]       SHAPE: smollm2-135m | tinyllama-1.1b; DTYPE: bf16 fp32 (default both)
# Environment: BATCH (8), SEQ (512), STEPS (10), APP (/tmp/gpu/app: a published bench-train, see README.md here),
# VARIANTS ("stored graphs checkpointing-graphs": ortlora keeping all activations, with --cuda-graphs, with both
# --gradient-checkpointing and --cuda-graphs; "checkpointing" is the fourth; a name containing "int4" adds
# --quantize-weights 4, a QLoRA-style base: other numbers than PEFT's, for memory only). A variant that fails is
# reported and the race goes on.
# Appends one JSON line per measurement to /tmp/race/results.jsonl and prints the side-by-side table.
set -euo pipefail
shape=$1; shift
dtypes=${*:-bf16 fp32}
here=$(cd "$(dirname "$0")" && pwd)
out=/tmp/race; mkdir -p "$out"
batch=${BATCH:-8}; seq=${SEQ:-512}; steps=${STEPS:-10}; app=${APP:-/tmp/gpu/app}; variants=${VARIANTS:-stored graphs checkpointing-graphs}
venv=/opt/torch/.venv/lib/python3.12/site-packages
export DOTNET_ROOT=/tmp/gpu/dotnet PATH=/tmp/gpu/dotnet:$PATH
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/lib64:$venv/nvidia/cu13/lib ORT_REAL_CORE=$venv/onnxruntime/capi/libonnxruntime.so.1.30.0

# Runs a command that ends with one JSON line while sampling the GPU's memory in use every 100 ms; prints that line
# with smi_peak_mib (peak minus the idle baseline: the process's whole footprint, CUDA context included, for both engines).
measured() {
  local base; base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$out/smi.log" & local smi=$!
  if ! "$@" > "$out/run.log" 2>&1; then kill $smi; tail -30 "$out/run.log" >&2; return 1; fi
  kill $smi; wait $smi 2>/dev/null || true
  local peak; peak=$(sort -n "$out/smi.log" | tail -1)
  grep '^{' "$out/run.log" | tail -1 | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r['smi_peak_mib']=$peak-$base; print(json.dumps(r))"
}

if [ ! -f "$out/$shape/model.onnx" ]; then
  echo "exporting $shape with torch.onnx (dynamo)..."; python3 "$here/peft_race.py" export --shape "$shape" --out "$out/$shape"
fi
for dtype in $dtypes; do
  echo "PEFT $shape $dtype..."
  measured python3 "$here/peft_race.py" time --shape "$shape" --dtype "$dtype" --batch "$batch" --seq "$seq" --steps "$steps" \
    | tee -a "$out/results.jsonl"
  precision=(); [ "$dtype" = fp32 ] || precision=(--"$dtype")
  for variant in $variants; do
    echo "ortlora $shape $dtype $variant..."
    flags=()
    case $variant in *checkpointing*) flags+=(--gradient-checkpointing) ;; esac
    case $variant in *graphs*) flags+=(--cuda-graphs) ;; esac
    case $variant in *int4*) flags+=(--quantize-weights 4) ;; esac
    measured dotnet "$app/bench-train.dll" --model "$out/$shape/model.onnx" --shape "$shape" --device cuda \
      --ep-library /tmp/gpu/libonnxruntime_providers_cuda.so --batch "$batch" --seq "$seq" --r 16 --steps "$steps" \
      "${precision[@]}" "${flags[@]}" --static-shapes --profile "$out/$shape-$dtype-$variant" --json | tee -a "$out/results.jsonl" \
      || { echo "ortlora $shape $dtype $variant FAILED (log above)"; continue; }
    python3 "$here/profile_summary.py" "$(ls -t "$out/$shape-$dtype-$variant"_*.json | head -1)" --top 12 || true
  done
done
python3 "$here/peft_race.py" table "$out/results.jsonl"
