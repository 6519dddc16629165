#!/usr/bin/env python3
"""The PEFT side of the GPU speed race, and the ONNX export ortlora trains.

  python3 peft_race.py time   --shape smollm2-135m --dtype bf16 [--batch 8 --seq 512 --steps 20 --warmup 5]
  python3 peft_race.py export --shape smollm2-135m --out DIR
  python3 peft_race.py table RESULTS.jsonl      (the side-by-side table race.sh prints)

`time` builds the Hugging Face Llama model of that shape with random weights (seed 0), wraps it with PEFT LoRA
(r=16, lora_alpha=32, the 7 linear layers, no dropout), and times full optimizer steps exactly as a PEFT user runs
them: torch eager, sdpa attention, the model in --dtype (adapters upcast to float32 by PEFT's default
autocast_adapter_dtype), loss from `labels`, global-norm clipping at 1.0, torch's AdamW. Prints one JSON line.

`export` writes the same base model (float32, no LoRA) with torch.onnx.export(dynamo=True) to DIR/model.onnx
(+ model.onnx.data): inputs input_ids, attention_mask [batch, sequence]; output logits.
"""
import argparse, json, os, time

# hidden, layers, heads, kv heads, intermediate, vocab, tied embeddings (as graphs/OrtLora.Graphs/LlamaShape.cs; rope
# theta is left at the default: it changes no cost, and transformers 5 moved it into rope_parameters)
SHAPES = {
    "smollm2-135m": (576, 30, 9, 3, 1536, 49152, True),
    "tinyllama-1.1b": (2048, 22, 32, 4, 5632, 32000, False),
    "llama-100m": (768, 12, 12, 4, 2048, 32000, True),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(shape: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    h, layers, heads, kv, inter, vocab, tied = SHAPES[shape]
    config = LlamaConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                         intermediate_size=inter, vocab_size=vocab, tie_word_embeddings=tied,
                         max_position_embeddings=2048, use_cache=False)
    torch.manual_seed(0)
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa")


def time_peft(a) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    model = build(a.shape).to("cuda", dtype)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01)
    g = torch.Generator(device="cuda").manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (a.batch, a.seq), device="cuda", generator=g)
    mask = torch.ones_like(ids)

    def step() -> float:
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / a.steps
    return {"engine": "peft", "shape": a.shape, "dtype": a.dtype, "batch": a.batch, "seq": a.seq,
            "step_ms": round(seconds * 1000, 2), "tokens_per_s": round(a.batch * a.seq / seconds),
            "peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20),
            "peak_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20),
            "trainable": sum(p.numel() for p in trainable), "loss": round(float(loss), 4),
            "torch": torch.__version__}


def export(a) -> dict:
    import torch

    class LogitsOnly(torch.nn.Module):
        """The fixtures' export convention: inputs input_ids and attention_mask, output logits, parameters under model_."""
        def __init__(self, model):
            super().__init__()
            self.model_ = model

        def forward(self, input_ids, attention_mask):
            return self.model_(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    model = LogitsOnly(build(a.shape).eval())
    os.makedirs(a.out, exist_ok=True)
    ids = torch.randint(0, model.model_.config.vocab_size, (2, 16))
    dynamic = torch.export.Dim.DYNAMIC  # batch and sequence; the exporter names them
    start = time.perf_counter()
    program = torch.onnx.export(model, (ids, torch.ones_like(ids)), dynamo=True, input_names=["input_ids", "attention_mask"],
                                output_names=["logits"], dynamic_shapes=({0: dynamic, 1: dynamic}, {0: dynamic, 1: dynamic}))
    program.save(os.path.join(a.out, "model.onnx"), external_data=True)
    return {"exported": os.path.join(a.out, "model.onnx"), "seconds": round(time.perf_counter() - start, 1)}


def table(path: str) -> str:
    """One row per (shape, dtype, ortlora variant): PEFT and ortlora side by side, ortlora's speed-up. The latest
    measurement of each wins."""
    rows = [json.loads(line) for line in open(path) if line.startswith("{")] if os.path.exists(path) else []
    lines = ["| shape | dtype | ortlora variant | PEFT tokens/s | ortlora tokens/s | speed-up | PEFT step ms | ortlora step ms "
             "| peak GPU MiB PEFT / ortlora (nvidia-smi) |", "|---|---|---|---|---|---|---|---|---|"]
    # ortlora on graphs/'s LlamaGraph of the shape (no export, or OWN_GRAPH) is its own row
    for shape, dtype, engine, model in dict.fromkeys((r["shape"], r["dtype"], r["engine"], r.get("model")) for r in rows
                                                     if r.get("engine", "").startswith("ortlora")):
        peft = next((r for r in reversed(rows) if r.get("engine") == "peft" and r["shape"] == shape and r["dtype"] == dtype), {})
        ours = next(r for r in reversed(rows) if r.get("engine") == engine and r["shape"] == shape and r["dtype"] == dtype and r.get("model") == model)
        speedup = f"{ours['tokens_per_s'] / peft['tokens_per_s']:.2f}x" if peft.get("tokens_per_s") and ours.get("tokens_per_s") else "-"
        label = engine + (" (LlamaGraph)" if model == "LlamaGraph" else "")
        lines.append(f"| {shape} | {dtype} | {label} | {peft.get('tokens_per_s', '-')} | {ours.get('tokens_per_s', '-')} | {speedup} "
                     f"| {peft.get('step_ms', '-')} | {ours.get('step_ms', '-')} | {peft.get('smi_peak_mib', '-')} / {ours.get('smi_peak_mib', '-')} |")
    return "\n".join(lines)


def main():
    import sys
    if len(sys.argv) == 3 and sys.argv[1] == "table":
        print(table(sys.argv[2]))
        return
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["time", "export"])
    p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="bf16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", default="/tmp/race")
    a = p.parse_args()
    print(json.dumps(time_peft(a) if a.what == "time" else export(a)), flush=True)


if __name__ == "__main__":
    main()
