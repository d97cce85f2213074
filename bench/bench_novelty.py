"""Novelty-index latency against archive size: flat vs HNSW over random unit vectors.

For each size and index kind: build time, single-query latency (one child at a time,
as the engine asks) for k=1 (near-duplicate check) and k=10 (novelty), and HNSW
recall against the exact flat answer: recall@1 for queries within cosine ~0.999 of an
archived vector (the near-duplicate question) and recall@10 over all queries (half of
them fresh random vectors, the worst case for HNSW: no structure to exploit). Optionally (--embed N) the embedding time of
N Mixer-sized genomes. Prints a markdown table for bench/README.md.

    python bench/bench_novelty.py                      # 1k, 10k, 100k; one thread
    python bench/bench_novelty.py --sizes 1000 10000 --queries 100 --embed 32
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from archive.novelty import NoveltyIndex  # noqa: E402

DIM = 384


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def single_query_ms(index: NoveltyIndex, queries: np.ndarray, k: int) -> tuple[float, float]:
    """Median and 95th percentile of one-at-a-time `nearest` latency, in milliseconds."""
    times = []
    for q in queries:
        t0 = time.perf_counter()
        index.nearest(q, k)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times)), float(np.percentile(times, 95))


def recall(approx: NoveltyIndex, exact: NoveltyIndex, queries: np.ndarray, k: int) -> float:
    """Share of the exact k nearest that the approximate index also returns."""
    hits = [len({i for i, _ in a} & {i for i, _ in e}) / k
            for a, e in zip(approx.search(queries, k), exact.search(queries, k))]
    return float(np.mean(hits))


def bench_index(sizes: list[int], n_queries: int, hnsw_m: int, ef_search: int) -> None:
    rng = np.random.default_rng(0)
    print("| archive size | index | build s | k=1 p50 ms | k=1 p95 ms | k=10 p50 ms | k=10 p95 ms "
          "| dup recall@1 | recall@10 |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        vectors = unit_vectors(rng, n)
        ids = [f"g{i}" for i in range(n)]
        # queries near archived points (like children of archived parents) plus fresh ones
        near = vectors[rng.integers(0, n, n_queries // 2)] + 0.05 * unit_vectors(rng, n_queries // 2)
        near = (near / np.linalg.norm(near, axis=1, keepdims=True)).astype(np.float32)
        queries = np.concatenate([near, unit_vectors(rng, n_queries - n_queries // 2)]).astype(np.float32)
        built = {}
        for kind in ("flat", "hnsw"):
            t0 = time.perf_counter()
            index = NoveltyIndex(DIM, kind, hnsw_m=hnsw_m, hnsw_ef_search=ef_search)
            index.add(ids, vectors)
            build_s = time.perf_counter() - t0
            built[kind] = index
            p50_1, p95_1 = single_query_ms(index, queries, 1)
            p50_10, p95_10 = single_query_ms(index, queries, 10)
            dup_recall = recall(index, built["flat"], near, 1)
            recall10 = recall(index, built["flat"], queries, 10)
            print(f"| {n:,} | {kind} | {build_s:.2f} | {p50_1:.3f} | {p95_1:.3f} | {p50_10:.3f} | {p95_10:.3f} "
                  f"| {dup_recall:.3f} | {recall10:.3f} |", flush=True)


def bench_embed(n: int) -> None:
    from archive.embed import Embedder

    code = (Path(__file__).resolve().parents[1] / "tests" / "test_embed.py").read_text()
    src = code.split("SOFTMAX = '''", 1)[1].split("'''", 1)[0]
    codes = [src.replace("1)", f"1) * {i}", 1) for i in range(n)]
    embedder = Embedder()
    t0 = time.perf_counter()
    embedder.model
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    embedder.embed(codes)
    per = (time.perf_counter() - t0) / n
    print(f"\nembedder: load {load_s:.1f} s; {per * 1e3:.0f} ms per Mixer-sized genome "
          f"(batch of {n}, {embedder.threads} torch thread)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-search", type=int, default=64)
    p.add_argument("--embed", type=int, default=0, help="also time embedding this many genomes")
    args = p.parse_args()
    faiss.omp_set_num_threads(args.threads)
    print(f"dim {DIM}, {args.queries} single queries, {args.threads} FAISS thread(s), "
          f"HNSW M={args.hnsw_m} efSearch={args.ef_search}\n")
    bench_index(args.sizes, args.queries, args.hnsw_m, args.ef_search)
    if args.embed:
        bench_embed(args.embed)


if __name__ == "__main__":
    main()
