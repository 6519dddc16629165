#!/usr/bin/env bash
# Here, before a GPU session's device calls: ../shared/gpu/prepare.sh (the CUDA provider in parts, .NET, stage.sh),
# then one app with both the CLI (ortlora.dll) and bench-train.dll, and the PEFT fixtures, in .gpu/ (kept out of git).
# Carry [".gpu/dotnet.tar.xz", ".gpu/app.tar.xz", ".gpu/ort129.tar.xz", ".gpu/fixtures", ".gpu/stage.sh"] in the call that
# stages the app.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
shared=$(cd ../shared && pwd)
"$shared/gpu/prepare.sh"
# Three parts instead of four (one device call fewer): each part plus the working tree stays under a call's 64 MiB.
rm -f .gpu/cuda-ep.part* && split -n 3 -d ~/.cache/ortlora-gpu/cuda-ep.so.xz .gpu/cuda-ep.part
sed -i 's/-ge 4 \]/-ge 3 ]/' .gpu/stage.sh
# ONNX Runtime 1.29's own core (the CPU package of the same npm publisher), for the 1.29 CUDA provider: the 1.30 core
# of the machine's Python crashed on GatherElements, Slice and later ops, which a shifted provider-bridge table between
# core and provider versions would explain (docs/gpu.md). session.sh tries both.
cache=~/.cache/ortlora-gpu
if [ ! -f "$cache/ort129.tar.xz" ]; then
  ( cd "$cache" && npm pack --silent com.github.asus4.onnxruntime@0.4.9 >/dev/null \
    && tar xzf com.github.asus4.onnxruntime-0.4.9.tgz package/Plugins/Linux/x64/libonnxruntime.so package/Plugins/Linux/x64/libonnxruntime_providers_shared.so \
    && tar -C package/Plugins/Linux/x64 -cJf ort129.tar.xz.tmp libonnxruntime.so libonnxruntime_providers_shared.so \
    && mv ort129.tar.xz.tmp ort129.tar.xz && rm -rf package com.github.asus4.onnxruntime-0.4.9.tgz )
fi
cp "$cache/ort129.tar.xz" .gpu/ort129.tar.xz
echo '[ -f .gpu/ort129.tar.xz ] && mkdir -p /tmp/gpu/ort129 && tar -C /tmp/gpu/ort129 -xJf .gpu/ort129.tar.xz; true' >> .gpu/stage.sh
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
