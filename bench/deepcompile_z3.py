"""Does DeepSpeed's DeepCompile take ZeRO-3's host work off the GPU's critical path? d12 on one GPU, bf16, B=64,
T=1024, 8 micro-steps per step, random tokens made on the GPU, three ways (one per process):
  zero1      ZeRO-1, each block compiled (ds_train's way): the reference
  zero3      ZeRO-3, each block compiled and a ZeRO-3 leaf module (ds_train's way): DeepSpeed's Python hooks
             gather, release and reduce per module and per parameter at every micro-step
  zero3_dc   ZeRO-3 under DeepCompile (`"compile": {"deepcompile": true}` and engine.compile()): the whole model
             compiled once, the hooks replaced by DeepSpeed's ops inside the graph
With TORCH_LOSS=1 the loss's chunks run as torch ops (compiled) in every mode instead of ds_train's Triton
kernel, whose call DeepCompile's trace cannot take in (a graph break: the head's weight, left partitioned
outside the graph, reached the matmul empty), and the head's weight gradient is summed through a bf16 product
(torch's fake tensors fail on addmm's out_dtype with out=, which the trace runs).
A probe with DeepSpeed's own loop and torch's AdamW, not ds_train's trainer (which does not offer DeepCompile):
the ratio between the modes is the figure. Needs CUDA and NCCL's headers (DeepCompile's native op is JIT-built
with both; with torch's NCCL wheel: CPATH=<site-packages>/nvidia/nccl/include).
  python bench/deepcompile_z3.py MODE [steps (default 14)]
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import deepspeed  # noqa: E402
import torch  # noqa: E402

from ds_train import distributed  # noqa: E402
from ds_train.model import GPT, Block, config_from_descriptor  # noqa: E402

B, T, ACCUM = 64, 1024, 8


def main(mode: str, steps: int):
    distributed.init_process_group(distributed.discover())  # a world of one, as a plain main.py run
    if os.environ.get("TORCH_LOSS") == "1":
        from ds_train import loss
        loss.triton_available = lambda: False
        loss._accumulate = lambda grad_weight, grad_logits, x_chunk: grad_weight.add_((grad_logits.t() @ x_chunk).float())
    model = GPT(config_from_descriptor("d12"))
    model.set_gelu_fusion(2)
    stage = 1 if mode == "zero1" else 3
    if mode != "zero3_dc":
        model.set_compile(True)
    if mode == "zero3":
        deepspeed.utils.set_z3_leaf_modules(model, [Block])
    config = {
        "train_micro_batch_size_per_gpu": B, "gradient_accumulation_steps": ACCUM, "gradient_clipping": 1.0,
        "bf16": {"enabled": True, "check_grad_overflow": False}, "data_types": {"grad_accum_dtype": "fp32"},
        "zero_optimization": {"stage": stage, **({"memory_efficient_linear": False} if stage == 3 else {})},
        "optimizer": {"type": "AdamW", "params": {"lr": 6e-4, "weight_decay": 0.1, "torch_adam": True}},
        "timers": {"throughput": {"enabled": False}},
        "compile": {"deepcompile": mode == "zero3_dc"},
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.param_groups(0.1), config=config)
    if mode == "zero3_dc":
        engine.compile(backend="inductor")
    gen = torch.Generator(device="cuda").manual_seed(0)
    times = []
    for step in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(ACCUM):
            tokens = torch.randint(0, 50257, (B, T + 1), device="cuda", generator=gen)
            loss = engine(tokens[:, :-1], tokens[:, 1:])
            engine.backward(loss)
            engine.step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
        print(f"{mode} step {step + 1}/{steps} | loss {loss.item():.6f} | {times[-1]:.1f} ms", flush=True)
    later = times[steps // 2:]  # DeepCompile recompiles its graphs after its first steps (its warm-up)
    mean = sum(later) / len(later)
    print(f"{mode}: mean of steps {steps // 2 + 1}-{steps} {mean:.1f} ms, {B * T * ACCUM / mean * 1000:,.0f} tokens/s, "
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 14)
