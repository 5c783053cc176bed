"""The on-disk vector index: one SQLite file holding files, chunks and a sqlite-vec `vec0` table.

Why SQLite + sqlite-vec (measured against FAISS and LanceDB in docs/rag.md): a 12 MB install, one file,
and real transactions. An update runs in a single write transaction, so an interrupted or failed build
(exception, Ctrl-C, kill -9) rolls back to the previous index, and readers (`rag serve`) keep seeing the
last committed index while a build runs (WAL mode). A new index is built in a temporary sibling file and
renamed into place only when complete.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from pear_edge.base.atomic import atomic_file
from pear_edge.base.errors import PearError
from pear_edge.rag.chunking import CHUNK_TOKENS, OVERLAP_TOKENS, Chunk, chunk_text
from pear_edge.rag.documents import SourceFile, scan_folder
from pear_edge.rag.embed import EMBEDDING_DIM, EMBEDDING_NAME, Embedder

FORMAT = "pear-edge-rag-1"
SCHEMA = f"""
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files(path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, chunks INTEGER NOT NULL);
CREATE TABLE chunks(id INTEGER PRIMARY KEY, path TEXT NOT NULL, number INTEGER NOT NULL,
                    start INTEGER NOT NULL, "end" INTEGER NOT NULL, text TEXT NOT NULL, UNIQUE(path, number));
CREATE VIRTUAL TABLE vectors USING vec0(embedding float[{EMBEDDING_DIM}] distance_metric=cosine);
"""


@dataclass(frozen=True)
class Hit:
    path: str
    number: int
    text: str
    score: float  # cosine similarity to the query

    @property
    def cite(self) -> str:
        return f"{self.path}#{self.number}"


@dataclass
class UpdateReport:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    chunks_embedded: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{len(self.added)} added, {len(self.changed)} changed, {len(self.removed)} removed, "
                f"{len(self.unchanged)} unchanged, {len(self.skipped)} skipped; "
                f"{self.chunks_embedded} chunks embedded in {self.seconds:.1f} s")


def _settings() -> dict[str, str]:
    return {"format": FORMAT, "embedding_model": EMBEDDING_NAME, "embedding_dim": str(EMBEDDING_DIM),
            "chunk_tokens": str(CHUNK_TOKENS), "overlap_tokens": str(OVERLAP_TOKENS)}


def _connect(path: Path, write: bool):
    """Open with sqlite-vec loaded; read-only unless writing, so a foreign file is never touched."""
    import apsw
    import sqlite_vec

    flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE if write else apsw.SQLITE_OPEN_READONLY
    try:
        conn = apsw.Connection(str(path), flags=flags)
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())
        conn.enable_load_extension(False)
        conn.set_busy_timeout(5000)
    except apsw.Error as exc:
        raise PearError(f"cannot open RAG index {path}: {exc}") from None
    return conn


def _read_meta(conn, path: Path) -> dict[str, str]:
    import apsw

    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except apsw.Error as exc:
        if isinstance(exc, apsw.BusyError):
            raise PearError(f"RAG index {path} is locked by another process; try again") from None
        raise PearError(f"{path} is not a pear-edge RAG index ({exc}); build one with: "
                        f"pear-edge rag index DOCS_DIR --db NEW_PATH") from None
    if meta.get("format") != FORMAT:
        raise PearError(f"{path} is a RAG index of format {meta.get('format')!r}, expected {FORMAT!r}; "
                        f"rebuild it with: pear-edge rag index DOCS_DIR --db NEW_PATH")
    return meta


class RagIndex:
    """A committed index opened for retrieval."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            raise PearError(f"RAG index {self.path} is a folder; give the index file built by `pear-edge rag index`")
        if not self.path.is_file():
            raise PearError(f"RAG index {self.path} not found; build it with: "
                            f"pear-edge rag index DOCS_DIR --db {self.path}")
        self.conn = _connect(self.path, write=False)
        self.meta = _read_meta(self.conn, self.path)

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of one query; a damaged or locked index is one PearError, not an apsw traceback."""
        import apsw

        try:
            return self.conn.execute(sql, params).fetchall()
        except apsw.BusyError:
            raise PearError(f"RAG index {self.path} is locked by another process; try again") from None
        except apsw.Error as exc:
            raise PearError(f"RAG index {self.path} is damaged ({type(exc).__name__}: {exc}); rebuild it with: "
                            f"pear-edge rag index DOCS_DIR --db NEW_PATH") from None

    def count(self) -> tuple[int, int]:
        files = self._query("SELECT count(*) FROM files")[0][0]
        chunks = self._query("SELECT count(*) FROM chunks")[0][0]
        return files, chunks

    def search(self, query_vector: np.ndarray, k: int = 5) -> list[Hit]:
        if k < 1:
            raise PearError(f"-k must be at least 1, got {k}")
        rows = self._query(
            "SELECT c.path, c.number, c.text, v.distance FROM "
            "(SELECT rowid, distance FROM vectors WHERE embedding MATCH ? AND k = ?) AS v "
            "JOIN chunks AS c ON c.id = v.rowid ORDER BY v.distance",
            (np.asarray(query_vector, dtype=np.float32).tobytes(), k))
        return [Hit(path, number, text, 1.0 - distance) for path, number, text, distance in rows]

    def chunks(self) -> list[tuple[str, str]]:
        """Every chunk as (file path, text), in file and chunk order."""
        return [tuple(r) for r in self.conn.execute("SELECT path, text FROM chunks ORDER BY path, number").fetchall()]

    def close(self) -> None:
        self.conn.close()


def update_index(docs_dir: str | os.PathLike, db_path: str | os.PathLike, embedder: Embedder,
                 progress: bool = True) -> UpdateReport:
    """Bring the index at `db_path` in line with `docs_dir`: embed new and changed files (by sha256), drop
    deleted ones. All or nothing: on any failure the previous index is left exactly as it was."""
    start = time.perf_counter()
    root, db = Path(docs_dir), Path(db_path)
    if not root.is_dir():
        raise PearError(f"documents folder {root} not found" if not root.exists() else f"{root} is not a folder")
    scan = scan_folder(root)
    if not scan.files:
        why = f" ({len(scan.skipped)} skipped: {scan.skipped[0]}{' ...' if len(scan.skipped) > 1 else ''})" \
            if scan.skipped else ""
        raise PearError(f"no .txt/.md text files to index in {root}{why}; the index was not changed")
    if db.exists():
        report = _update_existing(db, scan.files, embedder, progress)
    else:
        with atomic_file(db, suffix=".sqlite") as tmp:
            tmp.unlink()  # sqlite creates the file itself
            report = _update_existing(tmp, scan.files, embedder, progress, create=True)
    report.skipped = scan.skipped
    report.seconds = time.perf_counter() - start
    return report


def _update_existing(db: Path, files: list[SourceFile], embedder: Embedder, progress: bool,
                     create: bool = False) -> UpdateReport:
    import apsw

    conn = _connect(db, write=True)
    try:
        if not create:
            _read_meta(conn, db)  # refuse a foreign file before writing anything to it
        conn.execute("PRAGMA journal_mode=WAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except apsw.BusyError:
            raise PearError(f"RAG index {db} is being updated by another process; try again when it finishes") \
                from None
        try:
            report = _apply(conn, db, files, embedder, progress, create)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    return report


def _apply(conn, db: Path, files: list[SourceFile], embedder: Embedder, progress: bool,
           create: bool) -> UpdateReport:
    if create:
        conn.execute(SCHEMA)
        conn.executemany("INSERT INTO meta VALUES (?, ?)", _settings().items())
    meta = _read_meta(conn, db)
    settings_changed = any(meta.get(k) != v for k, v in _settings().items())
    known = dict(conn.execute("SELECT path, sha256 FROM files").fetchall())
    report = UpdateReport()
    todo: list[SourceFile] = []
    for f in files:
        if f.path not in known:
            report.added.append(f.path)
            todo.append(f)
        elif known[f.path] != f.sha256 or settings_changed:
            report.changed.append(f.path)
            todo.append(f)
        else:
            report.unchanged.append(f.path)
    current = {f.path for f in files}
    report.removed = sorted(p for p in known if p not in current)
    for path in report.removed + report.changed:
        _delete_file(conn, path)
    if settings_changed:
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", _settings().items())

    planned = [(f, chunk_text(f.text, embedder.tokenizer)) for f in todo]
    texts = [c.text for _, chunks in planned for c in chunks]
    vectors = iter(_embed_with_progress(embedder, texts, progress))
    for f, chunks in planned:
        _insert_file(conn, f, chunks, [next(vectors) for _ in chunks])
    report.chunks_embedded = len(texts)
    return report


def _embed_with_progress(embedder: Embedder, texts: list[str], progress: bool) -> Iterator[np.ndarray]:
    from tqdm import tqdm

    step = embedder.batch_size
    with tqdm(total=len(texts), desc="embedding chunks", unit="chunk", disable=not progress or not texts) as bar:
        for start in range(0, len(texts), step):
            batch = embedder.embed(texts[start:start + step])
            bar.update(len(batch))
            yield from batch


def _delete_file(conn, path: str) -> None:
    conn.execute("DELETE FROM vectors WHERE rowid IN (SELECT id FROM chunks WHERE path = ?)", (path,))
    conn.execute("DELETE FROM chunks WHERE path = ?", (path,))
    conn.execute("DELETE FROM files WHERE path = ?", (path,))


def _insert_file(conn, f: SourceFile, chunks: list[Chunk], vectors: list[np.ndarray]) -> None:
    conn.execute("INSERT INTO files VALUES (?, ?, ?)", (f.path, f.sha256, len(chunks)))
    for chunk, vector in zip(chunks, vectors):
        conn.execute('INSERT INTO chunks(path, number, start, "end", text) VALUES (?, ?, ?, ?, ?)',
                     (f.path, chunk.number, chunk.start, chunk.end, chunk.text))
        conn.execute("INSERT INTO vectors(rowid, embedding) VALUES (?, ?)",
                     (conn.last_insert_rowid(), vector.astype(np.float32).tobytes()))
