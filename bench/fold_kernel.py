"""One micro-step's fold of bf16 gradients into fp32 accumulators, on one GPU: an add_ per parameter (what
ds_train ran before ds_train/grad_fold.py) against grad_fold's one kernel launch.

    python bench/fold_kernel.py

For d12, d24 and d48 the accumulators are views into one flat fp32 buffer per parameter group, as DeepSpeed's
BF16_Optimizer keeps them (2-D weights, then biases and LayerNorms), and the gradients fresh bf16 tensors of
the parameters' shapes. Prints the median GPU time of each (CUDA events, 3 warm-ups, 30 timed), the bytes each
moves over that time, and whether the results are the same bits.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from gelu_epilogue import timed  # noqa: E402  (bench/, the script's own folder)
from ds_train import grad_fold  # noqa: E402
from ds_train.model import PADDED_VOCAB_SIZE, config_from_descriptor  # noqa: E402


def parameter_shapes(descriptor):
    """(matrices, vectors): the model's parameter shapes in its two AdamW groups."""
    cfg = config_from_descriptor(descriptor)
    C = cfg.n_embd
    matrices = [(PADDED_VOCAB_SIZE, C), (cfg.block_size, C)]
    vectors = []
    for _ in range(cfg.n_layer):
        matrices += [(3 * C, C), (C, C), (4 * C, C), (C, 4 * C)]
        vectors += [(C,), (C,), (3 * C,), (C,), (C,), (C,), (4 * C,), (C,)]
    return matrices, vectors + [(C,), (C,)]


def main():
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__}")
    print(f"{'model':<6} {'tensors':>7} {'params':>12} {'add_ each ms':>12} {'GB/s':>6} {'one launch ms':>13} "
          f"{'GB/s':>6} {'in kernel':>9} {'same bits':>9}")
    for descriptor in ("d12", "d24", "d48"):
        accumulators, grads = [], []
        for shapes in parameter_shapes(descriptor):
            flat = torch.zeros(sum(torch.Size(s).numel() for s in shapes), device="cuda")
            at = 0
            for shape in shapes:
                n = torch.Size(shape).numel()
                accumulators.append(flat[at:at + n].view(shape))
                grads.append(torch.randn(shape, device="cuda").bfloat16())
                at += n
        fold = grad_fold.Fold(accumulators)

        def each():
            for acc, grad in zip(accumulators, grads):
                acc.add_(grad)

        params = sum(a.numel() for a in accumulators)
        gigabytes = params * (4 + 4 + 2) / 1e9  # read fp32 and bf16, write fp32
        ms_each, ms_fold = timed(each), timed(lambda: fold(grads))
        start = [a.clone() for a in accumulators]
        each()
        by_each = [a.clone() for a in accumulators]
        for a, s in zip(accumulators, start):
            a.copy_(s)
        fold(grads)
        same = all(torch.equal(a, b) for a, b in zip(accumulators, by_each))
        sweep = "  ".join(f"{b}/{w}: {timed(lambda f=grad_fold.Fold(accumulators, b, w): f(grads)):.3f}"
                          for b, w in ((2048, 4), (4096, 8), (8192, 4), (8192, 8), (16384, 8)))
        print(f"{descriptor:<6} {len(accumulators):>7} {params:>12,} {ms_each:>12.3f} {gigabytes / ms_each * 1e3:>6.0f} "
              f"{ms_fold:>13.3f} {gigabytes / ms_fold * 1e3:>6.0f} {len(fold.in_kernel):>9} {str(same):>9}")
        print(f"       one launch at other block sizes / warps, ms: {sweep}")


if __name__ == "__main__":
    main()
