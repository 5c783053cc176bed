"""The vector index: incremental updates by content hash, all-or-nothing builds, retrieval sanity."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pydoc_data.topics
import pytest

from pear_edge.base.errors import PearError
from pear_edge.rag.embed import Embedder
from pear_edge.rag.index import RagIndex, update_index

TOPICS = ["try", "for", "while", "with", "import", "lambda", "class", "assert"]


class RecordingEmbedder(Embedder):
    """Remembers every text it embedded; optionally fails on the n-th call."""

    def __init__(self, fail_on_call: int | None = None):
        super().__init__(batch_size=4)
        self.texts: list[str] = []
        self.calls = 0
        self.fail_on_call = fail_on_call

    def embed(self, texts):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("simulated crash in the middle of a build")
        self.texts.extend(texts)
        return super().embed(texts)


@pytest.fixture(scope="module")
def embedder():
    return RecordingEmbedder()


def _write_topics(folder: Path, names, chars: int = 1200) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.txt").write_text(pydoc_data.topics.topics[name][:chars])


def _rows(db: Path) -> dict[str, list[tuple]]:
    index = RagIndex(db)
    rows = index.conn.execute("SELECT path, id, number, text FROM chunks ORDER BY id").fetchall()
    index.close()
    out: dict[str, list[tuple]] = {}
    for path, *rest in rows:
        out.setdefault(path, []).append(tuple(rest))
    return out


def test_incremental_reindex_embeds_only_what_changed(tmp_path, embedder):
    docs, db = tmp_path / "docs", tmp_path / "index.sqlite"
    _write_topics(docs, ["try", "for", "while"], chars=600)
    first = update_index(docs, db, embedder, progress=False)
    assert sorted(first.added) == ["for.txt", "try.txt", "while.txt"]
    before = _rows(db)

    embedder.texts.clear()
    again = update_index(docs, db, embedder, progress=False)
    assert again.unchanged == ["for.txt", "try.txt", "while.txt"] and embedder.texts == []

    (docs / "for.txt").write_text("The for statement iterates over a sequence. Changed text.")
    (docs / "while.txt").unlink()
    _write_topics(docs, ["with"], chars=600)
    embedder.texts.clear()
    report = update_index(docs, db, embedder, progress=False)
    assert (report.added, report.changed, report.removed, report.unchanged) == \
        (["with.txt"], ["for.txt"], ["while.txt"], ["try.txt"])
    after = _rows(db)
    embedded = set(embedder.texts)
    assert embedded == {t for _, _, t in after["for.txt"]} | {t for _, _, t in after["with.txt"]}
    assert after["try.txt"] == before["try.txt"]  # same rows, same ids: not re-embedded
    assert "while.txt" not in after
    index = RagIndex(db)
    assert index.count() == (3, sum(len(v) for v in after.values()))
    vec_rows = index.conn.execute("SELECT count(*) FROM vectors").fetchall()[0][0]
    assert vec_rows == index.count()[1]  # no orphan vectors left by the deletes


def test_failed_build_leaves_previous_index(tmp_path):
    docs, db = tmp_path / "docs", tmp_path / "index.sqlite"
    _write_topics(docs, ["try", "for"], chars=600)
    update_index(docs, db, RecordingEmbedder(), progress=False)
    before = _rows(db)
    _write_topics(docs, ["while", "with", "import"], chars=1500)
    (docs / "try.txt").unlink()
    with pytest.raises(RuntimeError, match="simulated crash"):
        update_index(docs, db, RecordingEmbedder(fail_on_call=2), progress=False)
    assert _rows(db) == before
    hits = RagIndex(db).search(Embedder().embed(["how do I handle an exception"])[0], k=1)
    assert hits[0].path == "try.txt"


def test_killed_build_leaves_previous_index(tmp_path):
    """kill -9 in the middle of embedding, with rows already inserted in the open transaction."""
    docs, db = tmp_path / "docs", tmp_path / "index.sqlite"
    _write_topics(docs, ["try"], chars=600)
    update_index(docs, db, RecordingEmbedder(), progress=False)
    before = _rows(db)
    _write_topics(docs, ["for", "while", "with"], chars=1500)
    (docs / "try.txt").write_text("changed")
    script = textwrap.dedent(f"""
        import os, signal
        from pear_edge.rag import embed, index
        calls = []
        real = embed.Embedder.embed
        def dying(self, texts):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, texts)
        embed.Embedder.embed = dying
        index.update_index({str(docs)!r}, {str(db)!r}, embed.Embedder(batch_size=2), progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert _rows(db) == before
    report = update_index(docs, db, RecordingEmbedder(), progress=False)  # and it recovers
    assert sorted(report.added) == ["for.txt", "while.txt", "with.txt"] and report.changed == ["try.txt"]


def test_retrieval_finds_the_right_file(tmp_path, embedder):
    docs, db = tmp_path / "docs", tmp_path / "index.sqlite"
    _write_topics(docs, TOPICS, chars=1500)
    update_index(docs, db, embedder, progress=False)
    index = RagIndex(db)
    questions = {
        "How do I handle an exception raised in a block of code?": "try.txt",
        "How do I write an anonymous function?": "lambda.txt",
        "What does a context manager's __exit__ method do?": "with.txt",
        "How is a module loaded and bound to a name?": "import.txt",
    }
    for question, expected in questions.items():
        hits = index.search(embedder.embed([question])[0], k=3)
        assert hits[0].path == expected, (question, [h.cite for h in hits])
        assert hits[0].score > hits[-1].score - 1e-6


def test_foreign_file_is_refused_and_untouched(tmp_path, embedder):
    docs = tmp_path / "docs"
    _write_topics(docs, ["try"], chars=300)
    other = tmp_path / "other.sqlite"
    import apsw
    apsw.Connection(str(other)).execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
    data = other.read_bytes()
    with pytest.raises(PearError, match="not a pear-edge RAG index"):
        update_index(docs, other, embedder, progress=False)
    assert other.read_bytes() == data
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
