#!/usr/bin/env python3
"""Where a training step's time goes: sums ONNX Runtime's profiler trace (bench-train --profile PREFIX) by op and
execution provider, skipping the first run (allocation, cuDNN/cuBLAS autotuning).

  python3 profile_summary.py TRACE.json [--top 15]

Prints the time per run, the share of each (op, provider) and the slowest nodes. Nodes on "CPUExecutionProvider"
in a CUDA run are fallbacks: each one copies its inputs to the host and back.
"""
import argparse, collections, json


def main():
    p = argparse.ArgumentParser()
    p.add_argument("trace")
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args()
    events = json.load(open(a.trace))
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"])
    if len(runs) < 2:
        raise SystemExit(f"{a.trace}: {len(runs)} model_run events; profile at least two runs (the first is warm-up)")
    first_end = runs[0]["ts"] + runs[0]["dur"]
    measured = runs[1:]
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_end]
    run_us = sum(r["dur"] for r in measured) / len(measured)
    by_op, by_node = collections.Counter(), collections.Counter()
    count = collections.Counter()
    for e in nodes:
        key = (e["args"].get("op_name", "?"), e["args"].get("provider", "?"))
        by_op[key] += e["dur"]
        count[key] += 1
        by_node[(e["name"][: -len("_kernel_time")], key[0])] += e["dur"]
    kernel_us = sum(by_op.values()) / len(measured)
    print(f"{a.trace}: {len(measured)} measured runs, {run_us / 1000:.1f} ms per run, "
          f"{kernel_us / 1000:.1f} ms in kernels ({100 * kernel_us / run_us:.0f}%), {len(nodes) // len(measured)} kernel launches per run")
    print(f"{'op':28} {'provider':28} {'ms/run':>9} {'share':>6} {'nodes':>6}")
    for (op, provider), us in by_op.most_common(a.top):
        print(f"{op:28} {provider:28} {us / len(measured) / 1000:9.2f} {100 * us / len(measured) / run_us:5.1f}% "
              f"{count[(op, provider)] // len(measured):6}")
    print("slowest nodes:")
    for (name, op), us in by_node.most_common(min(a.top, 10)):
        print(f"  {us / len(measured) / 1000:8.2f} ms  {op:20} {name}")


if __name__ == "__main__":
    main()
