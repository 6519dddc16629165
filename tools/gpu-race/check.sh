#!/usr/bin/env bash
# On the GPU machine, after staging (README.md here): does ortlora train correctly on CUDA, and which graphs crash the
# plugin? Each case runs in its own process, so a segfault is recorded and the next case still runs.
#   bash tools/gpu-race/check.sh            (fixtures from .gpu/fixtures, carried by the staging call)
#   DEVICE=cpu FIXTURES=../shared/fixtures/peft bash tools/gpu-race/check.sh    (the same cases here, with the local build)
set -uo pipefail
venv=/opt/torch/.venv/lib/python3.12/site-packages
export DOTNET_ROOT=/tmp/gpu/dotnet PATH=/tmp/gpu/dotnet:$PATH
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/lib64:$venv/nvidia/cu13/lib ORT_REAL_CORE=$venv/onnxruntime/capi/libonnxruntime.so.1.30.0
ep=(--device cuda --ep-library /tmp/gpu/libonnxruntime_providers_cuda.so)
ortlora=(dotnet /tmp/gpu/app/ortlora.dll)
if [ "${DEVICE:-cuda}" = cpu ]; then ep=(); ortlora=(dotnet src/OrtLora.Cli/bin/Release/net10.0/ortlora.dll); fi
fixtures=${FIXTURES:-.gpu/fixtures}
out=/tmp/check; mkdir -p "$out"
summary=()
case_() { # name command...
  local name=$1; shift
  timeout 300 "$@" > "$out/$name.log" 2>&1
  local rc=$?
  local verdict=$([ $rc -eq 0 ] && echo ok || { [ $rc -ge 128 ] && echo "CRASH (signal $((rc - 128)))" || echo "failed (rc $rc)"; })
  summary+=("$name: $verdict")
  echo "== $name: $verdict"; grep -E "│ (loss|grad|AdamW|20-step)|eval_loss|error" "$out/$name.log" | head -6
}
for arch in llama gpt2; do
  for export in dynamo torchscript; do
    for level in all basic; do
      case_ "verify-$arch-$export-$level" "${ortlora[@]}" verify "$fixtures/$arch/model.$export.onnx" \
        --init-from "$fixtures/$arch/adapter" --reference "$fixtures/$arch/reference.safetensors" \
        -o "$out/$arch-$export-$level.safetensors" --graph-optimization-level "$level" "${ep[@]}"
    done
  done
done
case_ "verify-llama-dynamo-checkpointing-chunks" "${ortlora[@]}" verify "$fixtures/llama/model.dynamo.onnx" \
  --init-from "$fixtures/llama/adapter" --reference "$fixtures/llama/reference.safetensors" \
  -o "$out/llama-checkpointing.safetensors" --gradient-checkpointing --loss-chunks 4 "${ep[@]}"
# --cuda-graphs: captured and replayed step, eval and accumulate graphs; their losses should match the runs without.
for flags in "" --fp16 --bf16 "--bf16 --gradient-checkpointing" "--pad-to-max-length --max-seq-length 128" \
    "--cuda-graphs --max-seq-length 128" "--bf16 --cuda-graphs --max-seq-length 128"; do
  name=$(echo "$flags" | tr -d ' ')
  case_ "train-tiny${name}" "${ortlora[@]}" train graphs/tiny/model.onnx --data graphs/tiny/demo.parquet \
    --eval-data graphs/tiny/demo_eval.parquet --target-modules all-linear --max-steps 20 --eval-steps 20 \
    --learning-rate 5e-3 --plain-log $flags -o "$out/train${name}" "${ep[@]}"
done
# DPO: the reference forward is its own graph (its own captured graph id under --cuda-graphs); ORPO has none.
for flags in "" "--cuda-graphs --max-seq-length 128" "--bf16" "--loss-type orpo"; do
  name=$(echo "$flags" | tr -d ' ')
  case_ "dpo-tiny${name}" "${ortlora[@]}" train graphs/tiny/model.onnx --data graphs/tiny/demo_preferences.parquet \
    --eval-data graphs/tiny/demo_preferences_eval.parquet --target-modules all-linear --max-steps 20 --eval-steps 20 \
    --learning-rate 5e-3 --plain-log $flags -o "$out/dpo${name}" "${ep[@]}"
done
# GRPO: the weighted-token loss's graphs on the device, sampling on the CPU session; the reward should reach 1.0 as on CPU.
for flags in "" "--bf16" "--num-iterations 2 --importance-sampling-level sequence"; do
  name=$(echo "$flags" | tr -d ' ')
  case_ "grpo-tiny${name}" "${ortlora[@]}" grpo graphs/tiny/model.onnx --data graphs/tiny/demo_prompts.parquet \
    --reward-funcs "regex:e" --max-completion-length 8 --num-generations 8 --per-device-train-batch-size 16 \
    --max-steps 30 --learning-rate 1e-2 --logging-steps 10 --plain-log $flags -o "$out/grpo${name}" "${ep[@]}"
done
printf '%s\n' "${summary[@]}"
