"""Model-state memory per GPU three ways: ds_train's estimate (ds_train/memory.py: weights + gradients +
optimizer, without activations and loss), DeepSpeed's own estimators (estimate_zero2/3_model_states_mem_needs,
additional_buffer_factor 1.5 as DeepSpeed prints them), and the plain arithmetic of bytes per parameter that
both start from. CPU only; no GPU, no data.

    python bench/estimators.py [--gpus 1 8] [--models d12 d24 d48 gpt3:c2048 gpt3:c2560 gpt3:c4096]
"""

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore")

from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs  # noqa: E402
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs  # noqa: E402

from ds_train import config, memory  # noqa: E402

GiB = 2**30
SETTINGS = [(1, "none"), (2, "none"), (3, "none"), (2, "optimizer"), (3, "optimizer"), (3, "all")]


def ds_train_model_states(model: str, gpus: int, stage: int, offload: str):
    """(GPU bytes of weights + gradients + optimizer, CPU bytes offloaded) per rank, bf16, by ds_train's estimate."""
    T = 2048 if model.startswith("gpt3") else 1024
    args = config.parse_args(["--ds_config", os.path.join("ds_configs", "gpt3.json"), "-e", model, "-t", str(T),
                              "-b", "1", "-d", str(T * gpus), "-z", str(stage), "--offload", offload])
    run, _, _ = config.resolve(args, gpus, has_gpu=True)
    parts = dict(memory.estimate(run))
    gpu = parts["weights"] + parts["gradients"] + parts["optimizer (fp32 master + AdamW)"]
    return gpu, memory.offloaded(run), run.model


def deepspeed_estimate(N: int, largest: int, gpus: int, stage: int, offload: str):
    """(GPU bytes, CPU bytes) per DeepSpeed 0.19's estimators (ZeRO-1 has none: it is shown with ZeRO-2's)."""
    if stage in (1, 2):
        cpu, gpu = estimate_zero2_model_states_mem_needs(N, gpus, 1, cpu_offload=offload != "none")
        return gpu, cpu
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(N, largest, gpus, 1, cpu_offload=offload != "none",
                                                        cpu_offload_params=offload == "all", zero_init=False)
    return gpu, cpu


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 8])
    p.add_argument("--models", nargs="+", default=["d12", "d24", "d48", "gpt3:c2048", "gpt3:c2560", "gpt3:c4096"])
    a = p.parse_args()
    print("GiB per GPU (CPU memory per node in brackets where offloaded); model states only, bf16 + fp32 master")
    print(f"{'model':<11} {'params':>7} {'GPUs':>4} {'ZeRO':>4} {'offload':>9} | {'ds_train':>17} | {'DeepSpeed':>17} | "
          "bytes per parameter, ds_train (DeepSpeed)")
    for model in a.models:
        for gpus in a.gpus:
            for stage, offload in SETTINGS:
                gpu, cpu, m = ds_train_model_states(model, gpus, stage, offload)
                N = m.num_params
                ds_gpu, ds_cpu = deepspeed_estimate(N, m.padded_vocab_size * m.n_embd, gpus, stage, offload)
                ours = f"{gpu / GiB:6.2f} [{cpu * gpus / GiB:7.2f}]" if offload != "none" else f"{gpu / GiB:6.2f}"
                theirs = f"{ds_gpu / GiB:6.2f} [{ds_cpu / GiB:7.2f}]" if offload != "none" else f"{ds_gpu / GiB:6.2f}"
                print(f"{model:<11} {N / 1e9:6.2f}B {gpus:>4} {stage:>4} {offload:>9} | {ours:>17} | {theirs:>17} | "
                      f"{gpu / N:5.2f} ({ds_gpu / N:5.2f})")


if __name__ == "__main__":
    main()
