#!/usr/bin/env bash
# Runs `ortlora verify` on every PEFT fixture and export in ../shared/fixtures/peft (or FIXTURES=DIR): loss,
# gradients, one AdamW step and the 20-step trajectory against PEFT's numbers, at the fixtures' tolerances.
# Also the external-data copy of the llama fixture. Exits non-zero when any check fails.
#   tools/check-fixtures/check-fixtures.sh
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
fixtures=${FIXTURES:-$root/../shared/fixtures}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
dotnet build "$root/src/OrtLora.Cli" -c Release -v quiet -nologo >/dev/null || { echo "build failed"; exit 2; }
ortlora=(dotnet "$root/src/OrtLora.Cli/bin/Release/net10.0/ortlora.dll")
failed=0
run() { # name model adapter reference
  echo "== $1"
  if ! "${ortlora[@]}" verify "$2" --init-from "$3" --reference "$4" -o "$out/$(basename "$1").safetensors"; then
    echo "FAILED: $1"; failed=$((failed + 1))
  fi
}
for arch in "$fixtures"/peft/*/; do
  arch=${arch%/}
  for model in "$arch"/model.*.onnx; do
    run "$(basename "$arch") $(basename "$model" .onnx | sed 's/^model\.//')" "$model" "$arch/adapter" "$arch/reference.safetensors"
  done
done
if [ -f "$fixtures/external-data/llama/model.onnx" ]; then
  run "llama external-data" "$fixtures/external-data/llama/model.onnx" "$fixtures/peft/llama/adapter" "$fixtures/peft/llama/reference.safetensors"
fi
echo "$failed failed"
exit $((failed > 0))
