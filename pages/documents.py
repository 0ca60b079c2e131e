"""Documents: upload files to the RAG index, see what is indexed, preview chunks, delete."""

from __future__ import annotations

import streamlit as st

from backends.apps.labels import counted
from backends.knowledge.loaders import SUPPORTED_TYPES
from pages.common import duet, key, literal, may_change_data, may_read, page_errors
from pages.panels import indexing_text

PAGE = "documents"
ICONS = {"added": "✅", "updated": "🔁", "duplicate": "⏭️", "rejected": "❌"}


def upload_section() -> None:
    files = st.file_uploader("Add documents", type=sorted(t.lstrip(".") for t in SUPPORTED_TYPES),
                             accept_multiple_files=True, key=key(PAGE, "upload"))
    if not files or not st.button("Index these files", type="primary", key=key(PAGE, "ingest")):
        return
    index = duet().index
    progress = st.progress(0.0, text="Indexing…")
    for number, upload in enumerate(files, 1):
        progress.progress((number - 1) / len(files), text=indexing_text(upload.name, number, len(files)))
        result = index.ingest_bytes(upload.name, upload.getvalue())
        same = f": the same file is already indexed as {indexed_name(result.doc_id)}" if result.status == "duplicate" else ""
        st.text(f"{ICONS[result.status]} {result.name}: {result.describe()}{same}")
    progress.progress(1.0, text=f"Done: {len(files)} files processed.")


def indexed_name(doc_id: str) -> str:
    """The name a document is indexed under, with its id ("handbook.pdf (id handbook)")."""
    name = next((d.name for d in duet().index.documents() if d.doc_id == doc_id), None)
    return f"{name} (id {doc_id})" if name else doc_id


def documents_section(allowed: bool) -> None:
    index = duet().index
    stats = index.stats()
    a, b, c = st.columns(3)
    a.metric("Documents", stats["documents"])
    b.metric("Chunks", stats["chunks"])
    c.metric("Size", f"{stats['bytes'] / 1024:.0f} KB")
    if done := st.session_state.pop(key(PAGE, "deleted"), None):
        st.success(done)  # shown after the rerun that refreshed the table
    documents = index.documents()
    if not documents:
        st.info("The index is empty: upload documents above.")
        return
    st.dataframe(
        [{"id": d.doc_id, "name": d.name, "type": d.file_type, "chunks": d.chunks, "added": d.added_at} for d in documents],
        hide_index=True, width="stretch",
    )
    chosen = st.selectbox("Document", [d.doc_id for d in documents], key=key(PAGE, "chosen"))
    preview, delete = st.columns([3, 1])
    with preview.expander("Preview chunks"):
        for chunk in index.chunks_of(chosen) if may_read("Document previews") else []:
            st.caption(f"{literal(chunk.location or 'text')} · characters {chunk.start}-{chunk.start + len(chunk.text)}")
            st.text(chunk.text)
    pending = key(PAGE, "pending")
    if delete.button("Delete document", key=key(PAGE, "delete"), disabled=not allowed):
        st.session_state[pending] = chosen
    if st.session_state.get(pending) == chosen:
        record = next(d for d in documents if d.doc_id == chosen)
        st.warning(f"Delete {literal(record.name)} and its {counted(record.chunks, 'chunk')} from the index? RAG can no longer cite it.")
        yes, no = st.columns(2)
        if yes.button("Yes, delete it", type="primary", key=key(PAGE, "yes")):
            deleted = index.delete(st.session_state.pop(pending))
            st.session_state[key(PAGE, "deleted")] = f"Deleted {literal(deleted.name)} ({counted(deleted.chunks, 'chunk')})."
            st.rerun()
        if no.button("Cancel", key=key(PAGE, "no")):
            st.session_state.pop(pending)
            st.rerun()


st.title("Documents")
st.caption("What the RAG backend can retrieve from. Files are parsed as data: nothing in them is executed or rendered as HTML.")
with page_errors():
    allowed = may_change_data("Uploading and deleting")
    if allowed:
        upload_section()
    documents_section(allowed)
    if allowed:
        if st.button("Build a fine-tuning dataset from these documents", icon="🎛️", key=key(PAGE, "dataset")):
            st.switch_page("pages/finetune.py")
