#!/usr/bin/env bash
# Here, before a GPU session's device calls: ../shared/gpu/prepare.sh (the CUDA provider in parts, .NET, stage.sh),
# then one app with both the CLI (ortlora.dll) and bench-train.dll, and the PEFT fixtures, in .gpu/ (kept out of git).
# Carry [".gpu/dotnet.tar.xz", ".gpu/app.tar.xz", ".gpu/fixtures", ".gpu/stage.sh"] in the call that
# stages the app.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
shared=$(cd ../shared && pwd)
"$shared/gpu/prepare.sh"
# Three parts instead of four (one device call fewer): each part plus the working tree stays under a call's 64 MiB.
rm -f .gpu/cuda-ep.part* && split -n 3 -d ~/.cache/ortlora-gpu/cuda-ep.so.xz .gpu/cuda-ep.part
sed -i 's/-ge 4 \]/-ge 3 ]/' .gpu/stage.sh
# The first staging call's time, for session.sh to reckon the device time left.
sed -i 's|^mkdir -p /tmp/gpu$|mkdir -p /tmp/gpu; [ -f /tmp/gpu/first-call ] \|\| date +%s > /tmp/gpu/first-call|' .gpu/stage.sh
rm -rf .gpu/app
for project in src/OrtLora.Cli/OrtLora.Cli.csproj tools/bench-train/bench-train.csproj; do
  dotnet publish "$project" -c Release -r linux-x64 --self-contained false -o .gpu/app >/dev/null
done
# The GPU machine's ONNX Runtime core is reached through ortshim (see ../shared/gpu/README.md).
rm -f .gpu/app/*.dll.so .gpu/app/onnxruntime*.dll .gpu/app/libonnxruntime.so
gcc -shared -fPIC -O2 -o .gpu/app/libonnxruntime.so "$shared/gpu/ortshim.c" -ldl
tar -C .gpu -cJf .gpu/app.tar.xz app && rm -rf .gpu/app
rm -rf .gpu/fixtures && cp -r "$shared/fixtures/peft" .gpu/fixtures
ls -la .gpu
