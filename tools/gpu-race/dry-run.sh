#!/usr/bin/env bash
# Here, before spending device time: session.sh end to end on this machine, with a stub nvidia-smi and the app
# published under /tmp/gpu/app (the normal ONNX Runtime, no CUDA provider). Every device case fails fast with "execution
# provider library not found", so what this checks is the script's own flow: phases, budget, verdicts, the variant
# choice and the table. BUDGET (default 240) bounds it; the logs land in /tmp/dry-run.
#   bash tools/gpu-race/dry-run.sh
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
stub=$(mktemp -d)
cat > "$stub/nvidia-smi" <<'EOS'
#!/bin/bash
[[ "$*" == *-lms* ]] && while true; do echo 1000; sleep 0.1; done
echo 1000
EOS
chmod +x "$stub/nvidia-smi"
rm -rf /tmp/gpu /tmp/race /tmp/check /tmp/dry-run && mkdir -p /tmp/gpu /tmp/dry-run
for project in src/OrtLora.Cli/OrtLora.Cli.csproj tools/bench-train/bench-train.csproj; do
  dotnet publish "$project" -c Release -r linux-x64 --self-contained false -o /tmp/gpu/app > /dev/null
done
date +%s > /tmp/gpu/first-call
PATH=$stub:$PATH OUT=/tmp/dry-run BUDGET=${BUDGET:-240} EXPORTS=${EXPORTS-smollm2-135m} \
  bash tools/gpu-race/session.sh > /tmp/dry-run/stdout.log 2>&1 || true
cat /tmp/dry-run/session.log
# Expected here: the probe and the exports fail for want of numpy and torch, bench-train aborts without the provider.
echo "verdicts: $(cat /tmp/check/*.verdict 2>/dev/null | wc -l) cases; the whole output: /tmp/dry-run/stdout.log"
rm -rf "$stub" /tmp/gpu
