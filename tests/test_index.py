"""The index on a real Chroma store: ids from content, duplicates, replacement, delete, recovery.

Every test runs twice: on the embedded store, and against a real `chroma run` server on a
loopback port (client/server mode), where they must pass the same way.
"""

import dataclasses
import json

import pytest

from backends.core.errors import BadInput
from backends.knowledge.index import DocumentIndex, make_doc_id, safe_display_name


@pytest.fixture(params=["embedded", "server"])
def store_settings(request, fresh_store):
    if request.param == "embedded":
        return fresh_store
    return dataclasses.replace(fresh_store, chroma_server=request.getfixturevalue("chroma_server"))


@pytest.fixture
def index(store_settings, duet):
    return DocumentIndex(store_settings, embeddings=duet.index.embeddings)


def test_ingest_twice_adds_nothing(index):
    text = b"The Osprey budget is 1.3 million euros.\n\nThe Heron budget is 2.1 million euros."
    first = index.ingest_bytes("budgets.txt", text)
    assert (first.status, first.chunks) == ("added", 1)
    count = index.chunk_count()
    second = index.ingest_bytes("budgets.txt", text)
    assert second.status == "duplicate" and second.describe() == "skipped (duplicate)"
    assert index.chunk_count() == count
    assert len(index.documents()) == 1


def test_two_documents_whose_names_look_alike_never_become_one(index):
    found = [index.ingest_bytes(name, text.encode()) for name, text in [
        ("Travel Policy.txt", "Trains are booked in second class."), ("travel_policy.txt", "Flights need approval."),
        ("报告.txt", "The report is due on Friday."), ("数据.txt", "The data is kept for two years.")]]
    assert [r.status for r in found] == ["added"] * 4 and len({r.doc_id for r in found}) == 4
    assert {d.name for d in index.documents()} == {"Travel Policy.txt", "travel_policy.txt", "报告.txt", "数据.txt"}
    assert found[0].doc_id == "travel-policy-txt" and found[2].doc_id == "报告-txt"  # readable, Unicode kept
    # The same name with new content is a new version of that document; the same content is a duplicate of it.
    again = index.ingest_bytes("travel_policy.txt", b"Flights need approval from a director.")
    assert (again.status, again.doc_id) == ("updated", found[1].doc_id)
    copy = index.ingest_bytes("copy.txt", "The data is kept for two years.".encode())
    assert (copy.status, copy.doc_id) == ("duplicate", found[3].doc_id) and len(index.documents()) == 4


def test_changed_file_replaces_its_old_chunks(index):
    index.ingest_bytes("fees.md", b"# Fees\nThe fee is 10 euros.")
    result = index.ingest_bytes("fees.md", b"# Fees\nThe fee is 12 euros.")
    assert result.status == "updated" and result.describe().startswith("added 1 chunks")
    texts = [s.text for s in index.chunks_of("fees-md")]
    assert texts == ["# Fees\nThe fee is 12 euros."]
    assert index.chunk_count() == 1
    assert index.documents()[0].sha256 == index.snapshot()["fees-md"]


def test_chunks_keep_offsets_locations_and_search_finds_them(index, settings):
    long_text = "\n\n".join(f"Paragraph {i}: the harbour code for berth {i} is HB-{i:03d}." for i in range(40))
    result = index.ingest_bytes("berths.txt", long_text.encode())
    assert result.chunks > 1
    chunks = index.chunks_of("berths-txt")
    for chunk in chunks:
        assert long_text[chunk.start:chunk.start + len(chunk.text)] == chunk.text
    sources, embed_s, retrieve_s = index.search("What is the harbour code for berth 17?", 3)
    assert any("HB-017" in s.text for s in sources)
    assert embed_s > 0 and retrieve_s > 0 and all(-1 <= s.score <= 1 for s in sources)


def test_delete_removes_chunks_and_manifest_entry(index):
    index.ingest_bytes("a.txt", b"alpha facts")
    index.ingest_bytes("b.txt", b"beta facts")
    record = index.delete("a-txt")
    assert record.name == "a.txt"
    assert [d.doc_id for d in index.documents()] == ["b-txt"]
    assert index.chunks_of("a-txt") == []
    with pytest.raises(BadInput, match="no document with id"):
        index.delete("a-txt")


def test_rejected_file_leaves_the_index_as_it_was(index):
    index.ingest_bytes("keep.txt", b"keep me")
    before = (index.snapshot(), index.chunk_count())
    result = index.ingest_bytes("broken.pdf", b"%PDF-1.4 truncated")
    assert result.status == "rejected" and "PDF" in result.reason
    assert (index.snapshot(), index.chunk_count()) == before


def test_crash_between_chunks_and_manifest_is_recovered_on_next_open(index, store_settings, duet, monkeypatch):
    index.ingest_bytes("stable.txt", b"stable content")

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated crash before the manifest was written)")

    monkeypatch.setattr(index, "_write_manifest", crash)
    with pytest.raises(OSError):
        index.ingest_bytes("half.txt", b"half-written document")
    assert index.chunk_count() == 2  # the orphan chunk is in Chroma, not in the manifest
    monkeypatch.undo()
    reopened = DocumentIndex(store_settings, embeddings=duet.index.embeddings)
    assert [d.doc_id for d in reopened.documents()] == ["stable-txt"]
    assert reopened.chunk_count() == 1
    assert reopened.ingest_bytes("half.txt", b"half-written document").status == "added"


@pytest.mark.fast
def test_file_names_never_become_paths():
    assert safe_display_name("../../etc/passwd") == "passwd"
    assert safe_display_name("C:\\Users\\x\\report.pdf") == "report.pdf"
    assert make_doc_id("../Travel Policy.PDF") == "travel-policy-pdf"


def test_search_agrees_with_the_langchain_vectorstore_view(index):
    """`search` queries Chroma itself; langchain-chroma over the same collection finds the same chunks and scores."""
    index.ingest_bytes("fleet.txt", "\n\n".join(f"Vessel {i} carries {i * 7} containers to port {i % 5}." for i in range(90)).encode())
    question = "How many containers does vessel 12 carry?"
    sources, _, _ = index.search(question, 4)
    hits = index.vectorstore.similarity_search_with_relevance_scores(question, k=4)
    assert [s.chunk_id for s in sources] == [doc.id for doc, _ in hits]
    assert [s.score for s in sources] == pytest.approx([score for _, score in hits], abs=1e-3)
    assert len(sources) == 4 and sources[0].score >= sources[-1].score


def test_manifest_is_valid_json_after_writes(index, store_settings):
    index.ingest_bytes("one.txt", b"one")
    manifest = json.loads(store_settings.manifest_path.read_text())
    assert set(manifest["documents"]["one-txt"]) >= {"doc_id", "name", "sha256", "chunks", "added_at"}


def test_server_mode_keeps_each_store_in_its_own_collection(chroma_server, fresh_store, tmp_path, duet):
    first = DocumentIndex(dataclasses.replace(fresh_store, chroma_server=chroma_server), embeddings=duet.index.embeddings)
    other = dataclasses.replace(fresh_store, store_dir=tmp_path / "other", chroma_server=chroma_server)
    second = DocumentIndex(other, embeddings=duet.index.embeddings)
    first.ingest_bytes("mine.txt", b"The server keeps this chunk apart.")
    assert first.collection_name != second.collection_name
    assert (first.chunk_count(), second.chunk_count()) == (1, 0)
    assert not fresh_store.chroma_dir.exists(), "nothing is stored locally in server mode"


def test_an_unreachable_server_is_a_clear_error(fresh_store, duet):
    from backends.core.errors import StoreUnavailable

    with pytest.raises(StoreUnavailable, match="cannot reach the Chroma server at 127.0.0.1:9"):
        DocumentIndex(dataclasses.replace(fresh_store, chroma_server="127.0.0.1:9"), embeddings=duet.index.embeddings)


def test_a_store_made_before_unique_ids_keeps_every_document_and_chunk(tmp_path, duet):
    """The demo store was written by the slug-only ids: opened now, nothing moves, and a new version of one of its
    files still replaces that document (found by its name), not a new one beside it."""
    from backends.core.config import load_settings
    from tests.helpers import copy_demo_store

    index = DocumentIndex(load_settings(store_dir=copy_demo_store(tmp_path / "old")), embeddings=duet.index.embeddings)
    try:
        before = {d.doc_id: d.chunks for d in index.documents()}
        count = index.chunk_count()
        assert before and sum(before.values()) == count
        result = index.ingest_bytes("company_overview.md", b"# Overview\nBrackwater employs 300 people.")
        assert (result.status, result.doc_id) == ("updated", "company-overview-md")
        after = {d.doc_id: d.chunks for d in index.documents()}
        assert set(after) == set(before) and after["company-overview-md"] == 1
        assert index.chunk_count() == count - before["company-overview-md"] + 1
    finally:
        index.close()
