#!/usr/bin/env bash
# On the GPU machine, after staging: the first node of graphs/tiny's training graphs that the CUDA provider crashes on
# (bench-train --bisect: prefixes of the graph run in child processes). Three at once: the eval graph with dynamic
# shapes, the step graph with static shapes in float32 and in bfloat16. KEEP_SLICES=1 bisects the graphs as emitted
# (without SliceAsGather). Logs in /tmp/race/bisect-*.log; the verdicts are printed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/env.sh"
mkdir -p /tmp/race
for spec in "eval" "step --static-shapes" "step --static-shapes --bf16"; do
  name=bisect-$(echo "$spec" | tr -d ' -')
  dotnet "${APP:-/tmp/gpu/app}/bench-train.dll" --shape tiny --batch 2 --seq 16 --device cuda --ep-library "$EP_LIBRARY" \
    ${KEEP_SLICES:+--keep-slices} --bisect $spec > "/tmp/race/$name.log" 2>&1 &
done
wait
for log in /tmp/race/bisect-*.log; do echo "== $log"; grep -E -A12 "first crashing|whole graph|rror" "$log" | head -16; done
