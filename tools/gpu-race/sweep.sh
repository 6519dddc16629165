#!/usr/bin/env bash
# On the GPU machine, after staging: every node signature of graphs/tiny's training graphs run alone on the CUDA
# provider (bench-train --sweep, Sweep.cs), so one call names every op the provider crashes on, where bisect.sh names
# the first. Six graphs at once, four workers each: graphs/tiny's eval graph (dynamic shapes), its step graph with
# dynamic and with static shapes, and with static shapes in bfloat16; the step graphs of the llama fixture's two
# exports with static shapes. KEEP_SLICES=1 sweeps the graphs as emitted (without the
# plugin rewrites). Logs in ${SWEEP_OUT:-/tmp/race}/sweep-*.log; the summaries are printed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/env.sh"
out=${SWEEP_OUT:-/tmp/race}; mkdir -p "$out"
for spec in "eval" "step" "step --static-shapes" "step --static-shapes --bf16"; do
  name=sweep-$(echo "$spec" | tr -d ' -')
  SWEEP_JOBS=${SWEEP_JOBS:-4} SWEEP_DIR=/tmp/$name timeout "${SWEEP_TIMEOUT:-200}" dotnet "${APP:-/tmp/gpu/app}/bench-train.dll" \
    --shape tiny --batch 2 --seq 16 --device cuda --ep-library "$EP_LIBRARY" ${KEEP_SLICES:+--keep-slices} --sweep $spec \
    > "$out/$name.log" 2>&1 &
done
# The fixture exports' own ops (GatherND, And, LessOrEqual ... of torch.onnx, not in graphs/tiny): the SmolLM2 export
# crashed with static shapes where graphs/tiny trained.
for export in dynamo torchscript; do
  model=${FIXTURES:-.gpu/fixtures}/llama/model.$export.onnx
  [ -f "$model" ] && SWEEP_JOBS=${SWEEP_JOBS:-4} SWEEP_DIR=/tmp/sweep-llama-$export timeout "${SWEEP_TIMEOUT:-200}" \
    dotnet "${APP:-/tmp/gpu/app}/bench-train.dll" --model "$model" --batch 2 --seq 16 --device cuda --ep-library "$EP_LIBRARY" \
    ${KEEP_SLICES:+--keep-slices} --sweep step --static-shapes > "$out/sweep-llama-$export.log" 2>&1 &
done
wait
for log in "$out"/sweep-*.log; do echo "== $log"; grep -E "^sweep:|signatures that crashed|rror" "$log" | head -5; done
