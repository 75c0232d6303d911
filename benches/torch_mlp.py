#!/usr/bin/env python3
"""PyTorch's eager CPU forward of examples/mlp_f32.ir, unsharded: the side of comparison for
benches/cpu_executor.rs (the issue's goal: the CPU executor within 1.5x of this).

    x: f32[2, 128, 768] -> linear(768 -> 3072) -> gelu(tanh) -> linear(3072 -> 768)
      -> dropout(p = 0.1, training = True)

with torch.nn.functional ops under torch.no_grad(). Prints the median (and min, mean) wall time
of many runs after a warm-up, in milliseconds, at torch's default thread count and at one
thread. Exits 0 with a message when torch is not importable.

    python3 benches/torch_mlp.py [--runs N] [--warmup N] [--threads N ...]

torch need not be installed system-wide: e.g.
    python3 -m pip install --target /tmp/torchcpu torch --index-url https://download.pytorch.org/whl/cpu
    PYTHONPATH=/tmp/torchcpu python3 benches/torch_mlp.py
"""

import argparse
import statistics
import sys
import time

B, S, D, H = 2, 128, 768, 3072
P = 0.1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200, help="timed runs per setting")
    ap.add_argument("--warmup", type=int, default=20, help="untimed runs first")
    ap.add_argument(
        "--threads",
        type=int,
        nargs="*",
        default=None,
        help="thread counts to measure (default: torch's default, then 1)",
    )
    args = ap.parse_args()

    try:
        import torch
        import torch.nn.functional as F
    except Exception as e:  # ImportError, or a broken install's OSError
        print(f"torch is not importable ({type(e).__name__}: {e}); nothing measured.")
        print("Install a CPU build, e.g. python3 -m pip install --target /tmp/torchcpu torch "
              "--index-url https://download.pytorch.org/whl/cpu, and run with "
              "PYTHONPATH=/tmp/torchcpu.")
        return 0

    torch.manual_seed(0)
    x = torch.randn(B, S, D, dtype=torch.float32)
    w0 = torch.randn(H, D, dtype=torch.float32) * D**-0.5
    b0 = torch.randn(H, dtype=torch.float32) * 0.02
    w1 = torch.randn(D, H, dtype=torch.float32) * H**-0.5
    b1 = torch.randn(D, dtype=torch.float32) * 0.02

    def forward():
        h = F.linear(x, w0, b0)
        a = F.gelu(h, approximate="tanh")
        y = F.linear(a, w1, b1)
        return F.dropout(y, p=P, training=True)

    default_threads = torch.get_num_threads()
    threads = args.threads if args.threads else [default_threads, 1]
    print(f"torch {torch.__version__}, {torch.__file__}")
    print(f"default torch.get_num_threads() = {default_threads}, "
          f"interop threads = {torch.get_num_interop_threads()}")
    print(f"MLP f32 [{B}, {S}, {D}] -> {H} -> {D}, gelu tanh, dropout p={P}; "
          f"{args.warmup} warm-up runs, {args.runs} timed runs")
    flops = 2 * 2 * B * S * D * H
    with torch.no_grad():
        for n in threads:
            torch.set_num_threads(n)
            for _ in range(args.warmup):
                forward()
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                forward()
                times.append((time.perf_counter() - t0) * 1e3)
            med = statistics.median(times)
            print(f"threads={n}: median {med:.3f} ms  (min {min(times):.3f}, "
                  f"mean {statistics.fmean(times):.3f}; {flops / med / 1e6:.1f} GFLOP/s)")
    torch.set_num_threads(default_threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
