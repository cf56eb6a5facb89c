"""A linear's bias gradient from its weight-gradient matmul, through a column of ones beside its input: worth it?

The trainer takes each block linear's weight gradient as one cuBLAS matmul, main_grad (fp32, out x in) +=
g.T @ x (ds_train/weight_grad.py), and its bias gradient as a separate column sum of g (rows x out, bf16), a
kernel that reads g again (3.0-3.4% of the step by bench/bias_grad.py). Were x stored with a column of ones beside
it, (rows, in + pad), the same matmul against an fp32 (out, in + pad) accumulator would give the bias gradient as
its column `in`: the sum within the matmul, which reads g anyway. This times, for each linear of a block at d12,
d24 and d48's micro-batches, on the GPU (bench/bias_grad.py's timer):
- `gemm`: the weight-gradient matmul alone, as the trainer runs it;
- `sum`: the bias gradient's column sum by torch.compile, as the trainer's backward leaves it to Inductor;
- `now`: both, one after the other;
- `ones+P`: the one matmul with x widened by P columns (a column of ones, then zeros: widths a multiple of 8 keep
  cuBLAS's rows 16-byte aligned), the accumulator widened alike.
Only the matmuls are timed: making the producers of x (LayerNorm, GELU's epilogue, attention) write into the
widened buffer is the change this would ask for, and is worth making only where `ones+P` beats `now`. Prints ms
per call, the step's total over layers and micro-steps, and the bias column's largest error against the sum.

    python bench/ones_column.py [--sizes d12 d24 d48] [--pads 8 64 128]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from bias_grad import SIZES, time_ms  # noqa: E402


def widened(x: torch.Tensor, pad: int) -> torch.Tensor:
    """x (rows, in) -> (rows, in + pad): x, a column of ones, then zeros."""
    out = torch.zeros(x.shape[0], x.shape[1] + pad, device=x.device, dtype=x.dtype)
    out[:, :x.shape[1]] = x
    out[:, x.shape[1]] = 1
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--pads", nargs="+", type=int, default=[8, 64, 128])
    args = parser.parse_args()
    torch.manual_seed(0)
    column_sum = torch.compile(lambda g: g.sum(0), dynamic=False)

    def gemm(acc, g, x):
        torch.addmm(acc, g.t(), x, out_dtype=torch.float32, out=acc)

    ways = ["gemm", "sum", "now"] + [f"ones+{p}" for p in args.pads]
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__}")
    print(f"{'size':5} {'linear':7} {'rows x in -> out':>20} " + "".join(f"{w:>10}" for w in ways)
          + "  max error of the bias column")
    for size in args.sizes:
        layers, C, rows, accum = SIZES[size]
        totals = dict.fromkeys(ways, 0.0)
        for name, fan_in, fan_out in (("c_attn", C, 3 * C), ("attn_pj", C, C), ("c_fc", C, 4 * C),
                                      ("mlp_pj", 4 * C, C)):
            pairs = [(torch.randn(rows, fan_out, device="cuda", dtype=torch.bfloat16),
                      torch.randn(rows, fan_in, device="cuda", dtype=torch.bfloat16)) for _ in range(2)]
            acc = torch.zeros(fan_out, fan_in, device="cuda")
            times = {"gemm": time_ms(lambda p: gemm(acc, *p), pairs),
                     "sum": time_ms(lambda p: column_sum(p[0]), pairs)}

            def now(p):
                gemm(acc, *p)
                column_sum(p[0])
            times["now"] = time_ms(now, pairs)
            errors = []
            for pad in args.pads:
                wide = [(g, widened(x, pad)) for g, x in pairs]
                acc_wide = torch.zeros(fan_out, fan_in + pad, device="cuda")
                times[f"ones+{pad}"] = time_ms(lambda p: gemm(acc_wide, *p), wide)
                acc_wide.zero_()
                gemm(acc_wide, *wide[0])
                exact = pairs[0][0].double().sum(0)
                errors.append((acc_wide[:, fan_in].double() - exact).abs().max().item() / exact.abs().max().item())
                del wide, acc_wide
            for w in ways:
                totals[w] += times[w] * layers * accum
            print(f"{size:5} {name:7} {f'{rows}x{fan_in}->{fan_out}':>20} "
                  + "".join(f"{times[w]:10.4f}" for w in ways) + "  " + ", ".join(f"{e:.1e}" for e in errors))
            del pairs, acc
        print(f"{size:5} {'step ms':7} {'':>20} " + "".join(f"{totals[w]:10.1f}" for w in ways)
              + f"  (x {layers} layers x {accum} micro-steps)")


if __name__ == "__main__":
    main()
