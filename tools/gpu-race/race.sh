#!/usr/bin/env bash
# The speed race of issue 6, on the GPU machine: PEFT and ortlora on the same model, settings and GPU, in one run.
#   bash tools/gpu-race/race.sh SHAPE [DTYPE ...]       SHAPE: smollm2-135m | tinyllama-1.1b; DTYPE: bf16 fp32 (default both)
# Environment: BATCH (8), SEQ (512), STEPS (10), APP (/tmp/gpu/app: a published bench-train, see README.md here),
# VARIANTS ("stored graphs checkpointing-graphs": ortlora keeping all activations, with --cuda-graphs, with both
# --gradient-checkpointing and --cuda-graphs; "checkpointing" is the fourth; --cuda-graphs keeps one captured graph per
# session (the state copied back), a name containing "parity" one per state parity (ORTLORA_COPY_STATE_BACK=0, which
# lost updates on the plugin); "recompute" adds --recompute-attention (`ortlora train`'s default; bench-train's
# engine stores the probabilities unless told); a name containing "int4" adds
# --quantize-weights 4, a QLoRA-style base: other numbers than PEFT's, for memory only; VARIANTS= (empty): PEFT only). A variant that fails is
# reported and the race goes on. A name containing "basic" ("extended", "none") loads the graphs at that ORT
# optimization level instead of all (basic: no com.microsoft fusions). PROFILE=1: ORT's per-node profile of each run, summarized (the profiler slows the steps it times).
# NO_EXPORT=1: no torch.onnx export (ortlora then trains graphs/'s LlamaGraph of the shape); OWN_GRAPH=1: that graph
# even where an export exists. RUN_TIMEOUT: seconds one measured run may take (300). SKIP_PEFT=1: ortlora only (PEFT measured before in the same results file). RESULTS: the JSON lines' file
# (default /tmp/race/results.jsonl; give profiled runs their own, or their slower steps would enter the table).
# Appends one JSON line per measurement to /tmp/race/results.jsonl and prints the side-by-side table.
set -euo pipefail
shape=$1; shift
dtypes=${*:-bf16 fp32}
here=$(cd "$(dirname "$0")" && pwd)
out=/tmp/race; mkdir -p "$out"; results=${RESULTS:-$out/results.jsonl}
batch=${BATCH:-8}; seq=${SEQ:-512}; steps=${STEPS:-10}; app=${APP:-/tmp/gpu/app}; variants=${VARIANTS-stored graphs checkpointing-graphs}
source "$here/env.sh"

# Runs a command that ends with one JSON line while sampling the GPU's memory in use every 100 ms; prints that line
# with smi_peak_mib (peak minus the idle baseline: the process's whole footprint, CUDA context included, for both engines).
measured() { # LOG command...: the run's output kept in $out/LOG
  local log=$out/$1; shift
  local base; base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$out/smi.log" & local smi=$!
  if ! timeout "${RUN_TIMEOUT:-300}" "$@" > "$log" 2>&1; then kill $smi; tail -30 "$log" >&2; return 1; fi
  kill $smi; wait $smi 2>/dev/null || true
  local peak; peak=$(sort -n "$out/smi.log" | tail -1)
  grep '^{' "$log" | tail -1 | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r['smi_peak_mib']=$peak-$base; print(json.dumps(r))"
}

if [ ! -f "$out/$shape/model.onnx" ] && [ -z "${NO_EXPORT:-}" ]; then
  echo "exporting $shape with torch.onnx (dynamo)..."; python3 "$here/peft_race.py" export --shape "$shape" --out "$out/$shape" || true
fi
# Should the export fail, ortlora trains its own LLaMA graph of the same shape (graphs/: LlamaGraph), said in the log.
model=(--model "$out/$shape/model.onnx")
[ -f "$out/$shape/model.onnx" ] || { echo "no export of $shape: ortlora runs graphs/'s LlamaGraph of that shape"; model=(); }
# OWN_GRAPH=1: graphs/'s LlamaGraph of the shape even where the export exists (the export crashed the plugin, 2026-12-04).
[ -n "${OWN_GRAPH:-}" ] && { echo "ortlora runs graphs/'s LlamaGraph of $shape (OWN_GRAPH)"; model=(); }
for dtype in $dtypes; do
  # PEFT once per shape and dtype: a results file that has its row already (an earlier session's) is not measured again.
  known=$(grep -c "\"engine\": \"peft\", \"shape\": \"$shape\", \"dtype\": \"$dtype\"" "$results" 2>/dev/null || true)
  [ -n "${SKIP_PEFT:-}" ] || [ "${known:-0}" -gt 0 ] || { echo "PEFT $shape $dtype..."
  measured "peft-$shape-$dtype.log" python3 "$here/peft_race.py" time --shape "$shape" --dtype "$dtype" --batch "$batch" --seq "$seq" --steps "$steps" \
    | tee -a "$results" || echo "PEFT $shape $dtype FAILED (log above)"; }
  precision=(); [ "$dtype" = fp32 ] || precision=(--"$dtype")
  for variant in $variants; do
    echo "ortlora $shape $dtype $variant..."
    flags=()
    case $variant in *checkpointing*) flags+=(--gradient-checkpointing) ;; esac
    case $variant in *recompute*) flags+=(--recompute-attention) ;; esac
    case $variant in *graphs*) flags+=(--cuda-graphs) ;; esac
    case $variant in *int4*) flags+=(--quantize-weights 4) ;; esac
    case $variant in *basic*) flags+=(--graph-optimization-level basic) ;; *extended*) flags+=(--graph-optimization-level extended) ;;
      *none*) flags+=(--graph-optimization-level none) ;; esac
    # "parity": one captured graph per state parity instead of the state copied back (ORTLORA_COPY_STATE_BACK=0).
    run_env=(env); case $variant in *parity*) run_env+=(ORTLORA_COPY_STATE_BACK=0) ;; esac
    # "pattern": ORT's memory pattern, one planned block per shape (ORTLORA_MEMORY_PATTERN=1), off by default since it
    # doubled a step's values on the CPU: the peak's A/B. "nopattern" forces the default off.
    case $variant in *nopattern*) run_env+=(ORTLORA_MEMORY_PATTERN=0) ;; *pattern*) run_env+=(ORTLORA_MEMORY_PATTERN=1) ;; esac
    # "sameas": the CUDA arena grows by what is asked, not by doubling regions (kNextPowerOfTwo, ORT's default).
    # "chunks1": the loss over the whole logits at once (the default cuts a vocabulary of 8192 or more into 8 chunks).
    case $variant in *chunks1*) flags+=(--loss-chunks 1) ;; esac
    case $variant in *sameas*) run_env+=(ORTLORA_CUDA_OPTIONS=arena_extend_strategy=kSameAsRequested) ;; esac
    # The profiler's own cost would slow the timed steps: PROFILE=1 profiles (time those runs separately).
    [ -n "${PROFILE:-}" ] && flags+=(--profile "$out/$shape-$dtype-$variant")
    measured "ortlora-$shape-$dtype-$variant.log" "${run_env[@]}" dotnet "$app/bench-train.dll" "${model[@]}" --shape "$shape" --device cuda \
      --ep-library "$EP_LIBRARY" --batch "$batch" --seq "$seq" --r 16 --steps "$steps" \
      "${precision[@]}" "${flags[@]}" --static-shapes --json | tee -a "$results" \
      || { echo "ortlora $shape $dtype $variant FAILED (log above)"; continue; }
    [ -n "${PROFILE:-}" ] && { python3 "$here/profile_summary.py" "$(ls -t "$out/$shape-$dtype-$variant"_*.json | head -1)" --top 15 || true; }
  done
done
python3 "$here/peft_race.py" table "$results"
