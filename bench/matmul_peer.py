"""PyTorch's side of taper-kernel-bench --products: the bf16 matrix products of one SmolLM2-135M
training step (2 x 512 tokens), the same shapes and transposes, bf16 tensors (PyTorch's CPU
matmul, oneDNN inside), best of N calls each. PyTorch writes bf16 results; taper's products write
fp32 (its accumulation type) and add into the weight gradients.

usage: python bench/matmul_peer.py [--threads 2] [--reps 20]
"""
import argparse
import time

import torch

SHAPES = [  # what, M, N, K, A transposed in memory, B given as N x K, per step
    ("q, o_proj: X W^T", 1024, 576, 576, 0, 1, 60),
    ("k, v_proj: X W^T", 1024, 192, 576, 0, 1, 60),
    ("gate, up: X W^T", 1024, 1536, 576, 0, 1, 60),
    ("down: X W^T", 1024, 576, 1536, 0, 1, 30),
    ("logits, 512 rows: X E^T", 512, 49152, 576, 0, 1, 2),
    ("dX of gate, up: dY W", 1024, 576, 1536, 0, 0, 60),
    ("dX of down: dY W", 1024, 1536, 576, 0, 0, 30),
    ("dX of q, o: dY W", 1024, 576, 576, 0, 0, 60),
    ("dX of k, v: dY W", 1024, 576, 192, 0, 0, 60),
    ("dX of logits: dZ E", 512, 576, 49152, 0, 0, 2),
    ("dW of gate, up: dY^T X", 1536, 576, 1024, 1, 0, 60),
    ("dW of down: dY^T X", 576, 1536, 1024, 1, 0, 30),
    ("dW of q, o: dY^T X", 576, 576, 1024, 1, 0, 60),
    ("dW of k, v: dY^T X", 192, 576, 1024, 1, 0, 60),
    ("dE of logits: dZ^T X", 49152, 576, 512, 1, 0, 2),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"PyTorch {torch.__version__}, {a.threads} threads, bf16 tensors, best of {a.reps}")
    print("| product | M x N x K | per step | GFLOP/s |\n| --- | --- | ---: | ---: |")
    flop_all = t_all = 0.0
    for what, m, n, k, ta, tb, per in SHAPES:
        A = torch.randn(k, m).bfloat16() if ta else torch.randn(m, k).bfloat16()
        B = torch.randn(n, k).bfloat16() if tb else torch.randn(k, n).bfloat16()
        a_op, b_op = (A.t() if ta else A), (B.t() if tb else B)
        best = float("inf")
        for r in range(a.reps + 2):
            t = time.perf_counter()
            torch.mm(a_op, b_op)
            t = time.perf_counter() - t
            if r >= 2:
                best = min(best, t)
        fl = 2.0 * m * n * k
        print(f"| {what} | {m} x {n} x {k} | {per} | {fl / best / 1e9:.1f} |")
        flop_all += fl * per
        t_all += best * per
    print(f"one step's products at these rates: {flop_all / 1e9:.0f} GFLOP in {1e3 * t_all:.0f} ms, "
          f"{flop_all / t_all / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
