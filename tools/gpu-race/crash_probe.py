#!/usr/bin/env python3
"""Which single ops make ONNX Runtime's CUDA plugin crash in Run? (issue 6; ../shared/gpu/README.md)

  python3 crash_probe.py all EP_LIBRARY        every case at levels basic and all, each in its own process
  python3 crash_probe.py one EP_LIBRARY CASE LEVEL

Each case is a graph of one to four nodes on a float input X [2, 8, 16], run on the plugin (with CPU fallback) and
compared with the CPU provider. The cases are the op signatures that were seen only in crashing runs (a float Slice
with constant or computed bounds, Sigmoid, com.microsoft FusedMatMul) next to their neighbours (Split for the same
halves, MatMul) and a node that must fall back to the CPU between two CUDA nodes (Mean: no CUDA kernel).
"""
import subprocess, sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def const(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.array(values, dtype=dtype), name)


def case_graph(case):
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 8, 16])
    nodes, inits, opsets = [], [], [helper.make_opsetid("", 18)]
    if case == "identity":
        nodes = [helper.make_node("Identity", ["X"], ["Y"])]
    elif case == "matmul":
        nodes = [helper.make_node("MatMul", ["X", "W"], ["Y"])]
        inits = [const("W", np.random.default_rng(0).standard_normal((16, 16)), np.float32)]
    elif case == "sigmoid":
        nodes = [helper.make_node("Sigmoid", ["X"], ["Y"])]
    elif case == "slice-const":  # rotate_half with constant bounds
        nodes = [helper.make_node("Slice", ["X", "s", "e", "a"], ["Y"])]
        inits = [const("s", [8]), const("e", [16]), const("a", [2])]
    elif case == "slice-const-steps":
        nodes = [helper.make_node("Slice", ["X", "s", "e", "a", "st"], ["Y"])]
        inits = [const("s", [0]), const("e", [16]), const("a", [2]), const("st", [2])]
    elif case == "slice-computed":  # llama torchscript: the bound from Shape and an int64 Div at run time
        nodes = [helper.make_node("Shape", ["X"], ["shape"]),
                 helper.make_node("Gather", ["shape", "two"], ["last"], axis=0),
                 helper.make_node("Div", ["last", "half"], ["mid"]),
                 helper.make_node("Slice", ["X", "mid", "end", "axes"], ["Y"])]
        inits = [const("two", [2]), const("half", [2]), const("end", [16]), const("axes", [2])]
    elif case == "split":  # the same halves as slice-const, as ortlora's RotaryEmbedding rewrite cuts them
        nodes = [helper.make_node("Split", ["X"], ["Y", "rest"], axis=2, num_outputs=2)]
    elif case == "cpu-in-middle":  # Relu (CUDA) -> Mean (no CUDA kernel: CPU) -> Relu (CUDA): two mid-graph copies
        nodes = [helper.make_node("Relu", ["X"], ["r"]), helper.make_node("Mean", ["r", "r"], ["m"]),
                 helper.make_node("Relu", ["m"], ["Y"])]
    elif case == "fusedmatmul":  # what level all makes of Transpose -> MatMul in a backward
        nodes = [helper.make_node("FusedMatMul", ["X", "W"], ["Y"], domain="com.microsoft", transB=1, alpha=1.0)]
        inits = [const("W", np.random.default_rng(0).standard_normal((16, 16)), np.float32)]
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    else:
        raise SystemExit(f"unknown case {case}")
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, case, [x], [y], inits), opset_imports=opsets)
    model.ir_version = 9
    return model.SerializeToString()


CASES = ["identity", "matmul", "sigmoid", "slice-const", "slice-const-steps", "slice-computed", "split", "cpu-in-middle",
         "fusedmatmul"]


def one(library, case, level):
    import onnxruntime as ort
    model = case_graph(case)
    x = np.random.default_rng(1).standard_normal((2, 8, 16)).astype(np.float32)
    expected = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(["Y"], {"X": x})[0]
    ort.register_execution_provider_library("cuda_plugin", library)
    devices = [d for d in ort.get_ep_devices() if "CUDA" in d.ep_name]
    if not devices:
        raise SystemExit("the plugin reports no CUDA device")
    so = ort.SessionOptions()
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    so.add_provider_for_devices(devices[:1], {})
    session = ort.InferenceSession(model, sess_options=so)
    for _ in range(3):
        got = session.run(["Y"], {"X": x})[0]
    print(f"max |cuda - cpu| = {float(np.abs(got - expected).max()):.2e}")


def all_cases(library):
    print(f"{'case':20} {'basic':28} {'all':28}")
    for case in CASES:
        verdicts = []
        for level in ("basic", "all"):
            try:
                p = subprocess.run([sys.executable, __file__, "one", library, case, level], capture_output=True, text=True, timeout=60)
            except subprocess.TimeoutExpired:
                verdicts.append("timed out")
                continue
            last = (p.stdout.strip().splitlines() or p.stderr.strip().splitlines() or ["?"])[-1]
            verdicts.append(("ok " + last.split("= ")[-1]) if p.returncode == 0 else
                            f"CRASH (signal {-p.returncode})" if p.returncode < 0 else f"failed: {last[:60]}")
        print(f"{case:20} {verdicts[0]:28} {verdicts[1]:28}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "all":
        all_cases(sys.argv[2])
    else:
        one(sys.argv[2], sys.argv[3], sys.argv[4])
