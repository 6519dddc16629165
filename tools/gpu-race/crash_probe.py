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
    # "-dynamic" cases declare X's dims symbolic: ORT cannot fold its Shape, so shape arithmetic runs at run time (on
    # the CPU, as ORT places it) between device nodes, as in ortlora's dynamic-shape graphs that crashed.
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["a", "b", "c"] if case.endswith("-dynamic") else [2, 8, 16])
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
    elif case == "gather-const":  # what SliceAsGather makes of slice-const under static shapes
        nodes = [helper.make_node("Gather", ["X", "idx"], ["Y"], axis=2)]
        inits = [const("idx", list(range(8, 16)))]
    elif case in ("range-gather", "range-gather-dynamic"):  # what it makes of it when the dim is known only at run time
        nodes = [helper.make_node("Shape", ["X"], ["shape"]), helper.make_node("Gather", ["shape", "two"], ["dim"], axis=0),
                 helper.make_node("Range", ["eight", "dim", "one"], ["idx"]), helper.make_node("Gather", ["X", "idx"], ["Y"], axis=2)]
        inits = [const("two", 2), const("eight", 8), const("one", 1)]
    elif case == "slice-int64":  # labels shifted: a Slice of integer data
        nodes = [helper.make_node("Cast", ["X"], ["xi"], to=TensorProto.INT64),
                 helper.make_node("Slice", ["xi", "s", "e", "a"], ["yi"]), helper.make_node("Cast", ["yi"], ["Y"], to=TensorProto.FLOAT)]
        inits = [const("s", [1]), const("e", [2**62]), const("a", [1])]
    elif case == "pad":  # Slice's gradient
        nodes = [helper.make_node("Pad", ["X", "pads"], ["Y"])]
        inits = [const("pads", [0, 0, 0, 0, 0, 4])]
    elif case == "split-sizes":
        nodes = [helper.make_node("Split", ["X", "sizes"], ["Y", "rest"], axis=2)]
        inits = [const("sizes", [4, 12])]
    elif case == "expand":
        nodes = [helper.make_node("ReduceSum", ["X", "ax"], ["r"], keepdims=1), helper.make_node("Expand", ["r", "shape"], ["Y"])]
        inits = [const("ax", [2]), const("shape", [2, 8, 16])]
    elif case == "scatternd-add":  # the embedding's gradient
        nodes = [helper.make_node("ScatterND", ["X", "where", "upd"], ["Y"], reduction="add")]
        inits = [const("where", [[1]]), const("upd", np.ones((1, 8, 16)), np.float32)]
    elif case == "gatherelements":  # the loss picks the labels' log-probabilities
        nodes = [helper.make_node("GatherElements", ["X", "idx"], ["Y"], axis=2)]
        inits = [const("idx", np.arange(2 * 8 * 16).reshape(2, 8, 16) % 16)]
    elif case == "gatherelements-pick":  # the loss's shape: one index along the axis
        nodes = [helper.make_node("GatherElements", ["X", "idx"], ["Y"], axis=2)]
        inits = [const("idx", np.arange(2 * 8).reshape(2, 8, 1) % 16)]
    elif case == "gatherelements-computed":  # and indices computed on the device, as the loss's from the labels
        nodes = [helper.make_node("ArgMax", ["X"], ["idx"], axis=2, keepdims=1),
                 helper.make_node("GatherElements", ["X", "idx"], ["Y"], axis=2)]
    elif case in ("scatterelements", "scatterelements-add"):  # the loss's gradient writes at the labels
        extra = {"reduction": "add"} if case.endswith("add") else {}
        nodes = [helper.make_node("ScatterElements", ["X", "idx", "upd"], ["Y"], axis=2, **extra)]
        inits = [const("idx", np.arange(2 * 8).reshape(2, 8, 1) % 16), const("upd", np.ones((2, 8, 1)), np.float32)]
    elif case == "unique-int64-roundtrip":  # int64 device -> CPU (Unique has no CUDA kernel) -> device mid-graph
        nodes = [helper.make_node("ArgMax", ["X"], ["am"], axis=2, keepdims=0), helper.make_node("Reshape", ["am", "flat"], ["amf"]),
                 helper.make_node("Unique", ["amf"], ["u"], sorted=1), helper.make_node("Gather", ["X", "u"], ["Y"], axis=2)]
        inits = [const("flat", [-1])]
    elif case == "gathernd-bool":  # torch.onnx's causal mask: GatherND of a bool mask by computed indices
        nodes = [helper.make_node("Greater", ["X", "zero"], ["m"]), helper.make_node("GatherND", ["m", "idx"], ["g"]),
                 helper.make_node("Cast", ["g"], ["Y"], to=TensorProto.FLOAT)]
        inits = [const("zero", 0.0, np.float32), const("idx", [[0, 1], [1, 3]])]
    elif case == "cumsum":  # position ids from an attention mask, in some exports
        nodes = [helper.make_node("CumSum", ["X", "ax"], ["Y"])]
        inits = [const("ax", 2)]
    elif case == "tile":  # repeat_kv in some exports
        nodes = [helper.make_node("Tile", ["X", "reps"], ["Y"])]
        inits = [const("reps", [1, 2, 1])]
    elif case == "einsum":  # rotary frequencies in some exports
        nodes = [helper.make_node("Einsum", ["X", "X"], ["Y"], equation="bij,bkj->bik")]
    elif case == "onehot":
        nodes = [helper.make_node("ArgMax", ["X"], ["am"], axis=2, keepdims=0), helper.make_node("OneHot", ["am", "depth", "vals"], ["Y"], axis=-1)]
        inits = [const("depth", 16), const("vals", [0.0, 1.0], np.float32)]
    elif case == "concat":  # ran inside graphs: alone too?
        nodes = [helper.make_node("Concat", ["X", "X"], ["Y"], axis=2)]
    elif case == "logsoftmax":
        nodes = [helper.make_node("LogSoftmax", ["X"], ["Y"], axis=-1)]
    elif case == "rmsnorm":  # what ortlora's training graphs make of the exported RMSNorms (RmsNormAsOp), with 1/sigma out
        nodes = [helper.make_node("SimplifiedLayerNormalization", ["X", "w"], ["Y", "inv_std"], axis=-1, epsilon=1e-5)]
        inits = [const("w", np.ones(16), np.float32)]
    elif case == "lora-weight-grad":  # a LoRA matrix's gradient since 2026-12-04: batched xT.dY (FusedMatMul transA at all), summed over the batch
        nodes = [helper.make_node("Transpose", ["X"], ["Xt"], perm=[0, 2, 1]), helper.make_node("MatMul", ["Xt", "X"], ["P"]),
                 helper.make_node("ReduceSum", ["P", "axes"], ["Y"], keepdims=0)]
        inits = [const("axes", [0])]
    elif case == "rotate-half-matmul":  # rotate_half as x.R, R a constant signed permutation (RotateHalfAsMatMul)
        r = np.zeros((16, 16), np.float32)
        for i in range(8):
            r[i + 8, i], r[i, i + 8] = -1, 1
        nodes = [helper.make_node("MatMul", ["X", "R"], ["Y"])]
        inits = [const("R", r, np.float32)]
    else:
        raise SystemExit(f"unknown case {case}")
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, case, [x], [y], inits), opset_imports=opsets)
    model.ir_version = 9
    return model.SerializeToString()


CASES = ["identity", "matmul", "sigmoid", "slice-const", "slice-const-steps", "slice-computed", "slice-int64", "split",
         "cpu-in-middle", "fusedmatmul", "gather-const", "range-gather", "pad", "split-sizes", "expand", "scatternd-add",
         "gatherelements", "gatherelements-pick", "gatherelements-computed", "scatterelements", "scatterelements-add",
         "logsoftmax", "range-gather-dynamic", "unique-int64-roundtrip", "gathernd-bool", "cumsum", "tile", "einsum", "onehot",
         "concat", "rmsnorm", "lora-weight-grad", "rotate-half-matmul"]


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


def verdict(library, case, level):
    try:
        p = subprocess.run([sys.executable, __file__, "one", library, case, level], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "timed out"
    last = (p.stdout.strip().splitlines() or p.stderr.strip().splitlines() or ["?"])[-1]
    return (("ok " + last.split("= ")[-1]) if p.returncode == 0 else
            f"CRASH (signal {-p.returncode})" if p.returncode < 0 else f"failed: {last[:60]}")


def all_cases(library):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(8) as pool:  # processes: threads only wait for them
        runs = {(case, level): pool.submit(verdict, library, case, level) for case in CASES for level in ("basic", "all")}
        print(f"{'case':20} {'basic':28} {'all':28}")
        for case in CASES:
            print(f"{case:20} {runs[(case, 'basic')].result():28} {runs[(case, 'all')].result():28}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "all":
        all_cases(sys.argv[2])
    else:
        one(sys.argv[2], sys.argv[3], sys.argv[4])
