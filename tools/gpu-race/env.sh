# Sourced by check.sh, race.sh and session.sh on the GPU machine: .NET and the app staged under /tmp/gpu
# (README.md here), ONNX Runtime's 1.30 core from the machine's Python, reached through ortshim, and the CUDA 13
# libraries the plugin links to, found where the image keeps them rather than at one fixed path.
venv=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || echo /opt/torch/.venv/lib/python3.12/site-packages)
export DOTNET_ROOT=/tmp/gpu/dotnet PATH=/tmp/gpu/dotnet:$PATH
cuda_libs=$(ls -d /usr/local/cuda-13*/lib64 /usr/local/cuda/lib64 "$venv"/nvidia/cu13/lib "$venv"/nvidia/*/lib 2>/dev/null | tr '\n' ':' || true)
export LD_LIBRARY_PATH=${cuda_libs%:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export ORT_REAL_CORE=$(ls "$venv"/onnxruntime/capi/libonnxruntime.so.1.* 2>/dev/null | head -1 || true)
EP_LIBRARY=/tmp/gpu/libonnxruntime_providers_cuda.so
