#!/usr/bin/env bash
# One shape and dtype of the race on a freshly started machine, in the least device time: the torch.onnx export (CPU,
# cores 0-11) runs while PEFT is timed (cores 12-15, so the export's threads do not slow PEFT's launch loop), then
# ortlora trains the export with all cores. Results and logs land in $OUT.
#   bash .gpu/stage.sh > /dev/null && bash tools/gpu-race/race-fresh.sh tinyllama-1.1b bf16
# DEADLINE: seconds this script may take in all (240); VARIANTS: ortlora's (race.sh's names; default stored-recompute,
# what `ortlora train` runs: attention recomputed, TinyLlama's stored step plans above PEFT's memory); STEPS (5).
set -uo pipefail
shape=$1 dtype=$2
here=$(cd "$(dirname "$0")" && pwd); source "$here/env.sh"
start=$(date +%s); deadline=${DEADLINE:-240}; r=/tmp/race; out=${OUT:-/tmp/out}; mkdir -p "$r" "$out"
pin() { if command -v taskset > /dev/null; then taskset -c "$@"; else shift; "$@"; fi; }
(pin 0-11 python3 "$here/peft_race.py" export --shape "$shape" --out "$r/$shape" > "$r/export-$shape.log" 2>&1) & export_pid=$!
NO_EXPORT=1 VARIANTS= pin 12-15 bash "$here/race.sh" "$shape" "$dtype" 2>&1 | grep -v ScatterND | tail -4
wait $export_pid; echo "[$(( $(date +%s) - start ))s] $(tail -1 "$r/export-$shape.log")"
left=$(( deadline - ($(date +%s) - start) - 10 ))
RUN_TIMEOUT=$left STEPS=${STEPS:-5} VARIANTS=${VARIANTS:-stored-recompute} bash "$here/race.sh" "$shape" "$dtype" 2>&1 | grep -v ScatterND | tail -25
echo "[$(( $(date +%s) - start ))s] done"
cp "$r/results.jsonl" "$out/" 2>/dev/null; (cd /tmp && tar -czf "$out/logs.tar.gz" race/*.log) 2>/dev/null; true
