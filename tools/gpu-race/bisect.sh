#!/usr/bin/env bash
# On the GPU machine, after staging: the first node of graphs/tiny's training graphs that the CUDA provider crashes on
# (bench-train --bisect: prefixes of the graph run in child processes). Three at once: the eval graph with dynamic
# shapes, the step graph with static shapes in float32 and in bfloat16. Then, for each node found, its cones
# (bench-train --sweep --cone: the node with its producers to depth 0, 1, 2 ..., the values entering each cut from a
# CPU run): a node that runs alone but crashes in its graph crashes from the smallest depth that holds the trigger.
# KEEP_SLICES=1 bisects the graphs as emitted (without the plugin rewrites). Logs in /tmp/race/bisect-*.log and
# /tmp/race/cone-*.log; the verdicts are printed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/env.sh"
mkdir -p /tmp/race
bench=(dotnet "${APP:-/tmp/gpu/app}/bench-train.dll" --shape tiny --batch 2 --seq 16 --device cuda --ep-library "$EP_LIBRARY" ${KEEP_SLICES:+--keep-slices})
specs=("eval" "step --static-shapes" "step --static-shapes --bf16")
for spec in "${specs[@]}"; do
  "${bench[@]}" --bisect $spec > "/tmp/race/bisect-$(echo "$spec" | tr -d ' -').log" 2>&1 &
done
wait
for spec in "${specs[@]}"; do
  name=$(echo "$spec" | tr -d ' -')
  node=$(grep -o "^first crashing node: #[0-9]* [^ ]* '.*'" "/tmp/race/bisect-$name.log" | sed "s/^[^']*'//; s/'$//")
  [ -n "$node" ] && SWEEP_JOBS=4 SWEEP_DIR=/tmp/cone-$name "${bench[@]}" --sweep $spec --cone "$node" > "/tmp/race/cone-$name.log" 2>&1 &
done
wait
for log in /tmp/race/bisect-*.log; do echo "== $log"; grep -E -A12 "first crashing|whole graph|rror" "$log" | head -16; done
for log in /tmp/race/cone-*.log; do [ -f "$log" ] && { echo "== $log"; grep -E "^ *[0-9]+ const|cones that" "$log" | cut -c1-240; }; done
