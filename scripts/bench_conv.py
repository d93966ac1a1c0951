"""What one 3×3 convolution reaches in onnxruntime on this machine (GFLOP/s ceiling).

The loss graph is ~26 such convolutions plus memory-bound glue, so its GFLOP/s can only
approach this number; a large square MatMul (MLAS's SGEMM) is printed beside it as the
machine's float32 ceiling. Run:  python scripts/bench_conv.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SHAPES = [(64, 64, 512), (128, 128, 256), (256, 256, 128), (512, 512, 64), (3, 64, 512),
          (64, 3, 512)]


def best_seconds(graph, feed: dict, threads: int,
                 level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> float:
    """Best of 5 runs of ``graph`` on the CPU provider, after 2 warm-up runs."""
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.intra_op_num_threads = threads
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    for _ in range(2):
        s.run(None, feed)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        s.run(None, feed)
        times.append(time.perf_counter() - t)
    return min(times)


def conv_gflops(cin: int, cout: int, side: int, threads: int, level) -> tuple[float, float]:
    w = numpy_helper.from_array(
        (np.random.default_rng(0).standard_normal((cout, cin, 3, 3)) * 0.01).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["z"], ["y"])]
    g = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         [1, cin, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=[w])
    x = np.random.default_rng(1).random((1, cin, side, side), dtype=np.float32)
    best = best_seconds(g, {"x": x}, threads, level)
    return best, 2 * 9 * cin * cout * side * side / best / 1e9


def gemm_gflops(n: int, threads: int) -> float:
    """Best of 5 n×n×n float32 MatMuls, GFLOP/s."""
    io = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "abc"]
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm", io[:2], io[2:])
    a = np.random.default_rng(2).random((n, n), dtype=np.float32)
    return 2 * n ** 3 / best_seconds(g, {"a": a, "b": a}, threads) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print("| Cin→Cout @ side | NCHW (EXTENDED) GFLOP/s | NCHWc (ALL) GFLOP/s |")
    print("|---|---|---|")
    for cin, cout, side in SHAPES:
        _, ext = conv_gflops(cin, cout, side, args.threads,
                             ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
        _, full = conv_gflops(cin, cout, side, args.threads, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        print(f"| {cin}→{cout} @ {side}² | {ext:.0f} | {full:.0f} |")
    print(f"\nMatMul 2048×2048×2048: {gemm_gflops(2048, args.threads):.0f} GFLOP/s")


if __name__ == "__main__":
    main()
