"""Measure vector-store candidates on the vectors of a built RAG index: sqlite-vec (what `rag index` uses),
FAISS (faiss-cpu) and LanceDB. Same vectors, same queries, exact search everywhere.

    python -m pear_edge.eval.lab.store_benchmark INDEX.sqlite OUT_DIR
(FAISS and LanceDB are not project dependencies: put them on PYTHONPATH, see docs/rag.md.)
Writes OUT_DIR/store_benchmark.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pear_edge.base.atomic import atomic_file, write_text_atomic
from pear_edge.rag.embed import EMBEDDING_DIM
from pear_edge.rag.index import RagIndex, _connect

QUERIES = 200
K = 5


def load_corpus(db: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    index = RagIndex(db)
    rows = index.conn.execute("SELECT c.id, c.path, v.embedding FROM chunks c JOIN vectors v ON v.rowid = c.id "
                              "ORDER BY c.id").fetchall()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    vectors = np.stack([np.frombuffer(r[2], dtype=np.float32) for r in rows])
    return ids, vectors, [r[1] for r in rows]


class SqliteVecStore:
    name = "sqlite-vec 0.1.9 (apsw)"

    def __init__(self, folder: Path):
        self.conn = _connect(folder / "v.sqlite", write=True)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"CREATE VIRTUAL TABLE v USING vec0(embedding float[{EMBEDDING_DIM}] distance_metric=cosine)")

    def add(self, ids, vectors, paths):
        with self.conn:
            self.conn.executemany("INSERT INTO v(rowid, embedding) VALUES (?, ?)",
                                  [(int(i), v.tobytes()) for i, v in zip(ids, vectors)])

    def remove(self, ids):
        with self.conn:
            self.conn.executemany("DELETE FROM v WHERE rowid = ?", [(int(i),) for i in ids])

    def search(self, q):
        return [r[0] for r in self.conn.execute("SELECT rowid FROM v WHERE embedding MATCH ? AND k = ?",
                                                (q.tobytes(), K))]


class FaissStore:
    """IndexIDMap2(IndexFlatIP): exact; persisted by writing the whole index file (atomically) per change."""

    def __init__(self, folder: Path):
        import faiss

        self.faiss, self.path = faiss, folder / "v.faiss"
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(EMBEDDING_DIM))
        self.name = f"FAISS {faiss.__version__} (faiss-cpu)"

    def _persist(self):
        with atomic_file(self.path) as tmp:
            self.faiss.write_index(self.index, str(tmp))

    def add(self, ids, vectors, paths):
        self.index.add_with_ids(vectors, ids)
        self._persist()

    def remove(self, ids):
        self.index.remove_ids(np.asarray(ids, dtype=np.int64))
        self._persist()

    def search(self, q):
        return list(self.index.search(q[None, :], K)[1][0])


class LanceStore:
    def __init__(self, folder: Path):
        import lancedb

        self.db = lancedb.connect(str(folder / "lance"))
        self.table = None
        self.name = f"LanceDB {lancedb.__version__}"

    def add(self, ids, vectors, paths):
        rows = [{"id": int(i), "path": p, "vector": v.tolist()} for i, v, p in zip(ids, vectors, paths)]
        if self.table is None:
            self.table = self.db.create_table("chunks", data=rows)
        else:
            self.table.add(rows)

    def remove(self, ids):
        self.table.delete(f"id IN ({', '.join(str(int(i)) for i in ids)})")

    def search(self, q):
        return [r["id"] for r in self.table.search(q).metric("cosine").limit(K).to_list()]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(store_cls, ids, vectors, paths) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="storebench."))
    try:
        store = store_cls(folder)
        start = time.perf_counter()
        store.add(ids, vectors, paths)
        build_s = time.perf_counter() - start
        rng = np.random.default_rng(0)
        queries = vectors[rng.choice(len(vectors), QUERIES, replace=len(vectors) < QUERIES)] + \
            rng.normal(0, 0.02, (QUERIES, EMBEDDING_DIM)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :K]
        store.search(queries[0])  # warm-up
        times, recalls = [], []
        for q, truth in zip(queries, exact):
            t0 = time.perf_counter()
            found = store.search(q)
            times.append(time.perf_counter() - t0)
            recalls.append(len(set(map(int, found)) & set(map(int, ids[truth]))) / K)
        one_file = [i for i, p in zip(ids, paths) if p == paths[len(paths) // 2]]
        rows = np.isin(ids, one_file)
        t0 = time.perf_counter()
        store.remove(one_file)
        store.add(ids[rows], vectors[rows], [p for p, r in zip(paths, rows) if r])
        update_s = time.perf_counter() - t0
        return {"store": store.name, "vectors": int(len(ids)), "build_s": round(build_s, 4),
                "query_ms_median": round(1000 * statistics.median(times), 3),
                "recall_at_5": round(float(np.mean(recalls)), 4),
                "update_one_file_s": round(update_s, 4), "update_chunks": len(one_file),
                "disk_mb": round(folder_bytes(folder) / 1e6, 2)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_plot(results: list[dict], path: Path) -> None:
    from pear_edge.base.plots import pyplot, save_png

    metrics = [("build_s", "build (s)"), ("query_ms_median", "query, median (ms)"),
               ("update_one_file_s", "replace one file (s)"), ("disk_mb", "on disk (MB)")]
    fig, axes = pyplot().subplots(1, len(metrics), figsize=(14, 3.2))
    for ax, (key, title) in zip(axes, metrics):
        ax.bar([r["store"].split(" (")[0] for r in results], [r[key] for r in results], color="#4a7")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=7, rotation=15)
    fig.suptitle(f"vector stores on {results[0]['vectors']} all-MiniLM-L6-v2 vectors (exact search, k={K})")
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db")
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    ids, vectors, paths = load_corpus(Path(args.db))
    results = []
    for cls in (SqliteVecStore, FaissStore, LanceStore):
        try:
            results.append(measure(cls, ids, vectors, paths))
        except ImportError as exc:
            print(f"skipping {cls.__name__}: {exc}", file=sys.stderr)
    out = Path(args.out_dir)
    write_text_atomic(out / "store_benchmark.json", json.dumps(results, indent=2) + "\n")
    header = "| store | vectors | build s | query ms (median) | recall@5 | replace one file s | disk MB |\n" \
             "|---|---|---|---|---|---|---|\n"
    table = header + "".join(f"| {r['store']} | {r['vectors']} | {r['build_s']} | {r['query_ms_median']} | "
                             f"{r['recall_at_5']} | {r['update_one_file_s']} ({r['update_chunks']} chunks) | "
                             f"{r['disk_mb']} |\n" for r in results)
    write_text_atomic(out / "store_benchmark.md", table)
    write_plot(results, out / "store_benchmark.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
