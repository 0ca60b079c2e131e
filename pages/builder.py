"""Fine-tune page, first part: build a dataset from the indexed documents, review and edit it, save it.

The build runs in a background thread of the server (one at a time per process) and this part
polls it; the reviewed dataset is saved in the store's datasets/ folder, where the training
form finds it.
"""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from backends.core.errors import DuetError
from backends.learning.adapters import check_adapter_name
from backends.learning.exports import export_dataset
from backends.learning.datasets import (DEFAULT_PARAPHRASES, FORMATS, MAX_PARAPHRASES, DatasetJob, DatasetOptions,
                                        edited, plan_build, save_dataset, saved_datasets, uses_model)
from backends.apps.labels import counted
from pages.common import duet, key, literal, watch_job
from pages.panels import marked

PAGE = "finetune"
COLUMNS = ["row", "question", "answer", "quality", "source"]


def build_form() -> None:
    index = duet().index
    documents = index.documents()
    if not documents:
        st.info("The index is empty: add documents on the Documents page first.")
        return
    names = {d.doc_id: d.name for d in documents}
    chosen = st.multiselect("Documents", list(names), select_all=False, format_func=names.get, placeholder="All documents",
                            key=key(PAGE, "build.docs"))
    a, b, c = st.columns(3)
    paraphrases = int(a.number_input("Question wordings per fact beyond the first (K)", 0, MAX_PARAPHRASES,
                                     DEFAULT_PARAPHRASES, key=key(PAGE, "build.k"),
                                     help="More wordings teach a fact better (Ovadia et al. 2024) and cost training time."))
    form = b.selectbox("Format", FORMATS, key=key(PAGE, "build.format"),
                       help="qa: question/answer pairs; raft: with gold and distractor chunks, for RAG + fine-tuned; "
                            "text: the chunks themselves")
    share = c.slider("Held-out share of facts", 0.0, 0.5, 0.2, 0.05, key=key(PAGE, "build.share"))
    options = DatasetOptions(paraphrases=paraphrases, format=form, eval_share=share, doc_ids=tuple(chosen))
    plan = plan_build(index, options)
    st.caption(f"{counted(len(plan.documents), 'document')}, {counted(len(plan.chunks), 'chunk')}: about "
               f"{plan.estimate_s:.0f} s.")
    if st.button("Build a dataset from my documents", type="primary", key=key(PAGE, "build.start")):
        try:
            duet().jobs.start("dataset build", DatasetJob(index, options, duet().llm if uses_model(duet().settings) else None))
            st.rerun()
        except DuetError as error:
            st.error(literal(str(error)))


def build_view() -> None:
    job: DatasetJob | None = duet().jobs["dataset build"]
    if job is None:
        return

    def progress(latest):
        if latest is None:
            return 0.0, "Building the dataset: starting…"
        return latest.done / latest.total, (f"Building the dataset · {latest.stage}: {latest.done} of {latest.total}, "
                                            f"about {latest.eta_s:.0f} s left")

    watch_job(job, f"{PAGE}.build", progress, every=0.5)
    if job.state == "done":
        review(job)


def filter_chart(manifest: dict) -> go.Figure:
    filters = manifest["filters"]
    labels = [name.replace("_", " ") for name in filters]
    figure = go.Figure(go.Bar(x=list(filters.values()), y=labels, orientation="h", marker_color="#7a7a7a",
                              text=list(filters.values()), textposition="auto"))
    figure.update_layout(title="Questions removed, by filter", height=240, margin=dict(l=10, r=10, t=40, b=10))
    return figure


def review(job: DatasetJob) -> None:
    dataset = job.result
    manifest, counts = dataset.manifest, dataset.manifest["counts"]
    st.success(f"{counted(counts['train'], 'training row')} about {counted(counts['train_facts'], 'fact')}, "
               f"{counted(counts['eval'], 'held-out question')}, from {counted(counts['chunks'], 'chunk')} in "
               f"{manifest['seconds']:.0f} s.")
    if manifest["documents_without_facts"]:
        st.info("No facts found in: " + ", ".join(manifest["documents_without_facts"]))
    st.plotly_chart(filter_chart(manifest), key=key(PAGE, "build.filters"))
    st.markdown("**Review the training rows**: fix a question or an answer in place, or select rows and delete them. "
                "*Quality* (0 to 1) scores the generated question: its subject named, its question word fitting the "
                "answer, its length; rows below 0.6 were left out.")
    table = [{"row": number, **{c: r.get(c, "") for c in COLUMNS[1:]}} for number, r in enumerate(dataset.train)]
    rows = st.data_editor(table, num_rows="dynamic", disabled=["row", "quality", "source"], hide_index=True, width="stretch",
                          key=key(PAGE, "build.rows"))
    evidence_view(dataset.train)
    name = st.text_input("Dataset name", value="my-documents", max_chars=64, key=key(PAGE, "build.name"))
    others = st.checkbox("Also write Alpaca and ShareGPT files for other trainers (LLaMA-Factory, Unsloth, axolotl)",
                         key=key(PAGE, "build.export"), disabled=dataset.manifest.get("format") == "text")
    if st.button("Save dataset", key=key(PAGE, "build.save")):
        try:
            check_adapter_name(name)
            kept = [_merged(dataset.train, row) for row in rows if row.get("question") and row.get("answer")]
            path = save_dataset(edited(dataset, kept), duet().settings.store_dir / "datasets" / name)
            exported = export_dataset(path) if others else []
            st.success(f"Saved {len(kept)} rows to {literal(str(path))}: choose it under Dataset below and train."
                       + (f" Also wrote {', '.join(p.name for p in exported)}." if exported else ""))
        except DuetError as error:
            st.error(literal(str(error)))


def _merged(original: list[dict], row: dict) -> dict:
    """An edited table row with its provenance (evidence, chunk) kept from the row it came from; a row the
    reviewer added has none."""
    try:
        number = int(row.get("row"))  # numpy's integer from the editor; None or NaN for an added row
    except (TypeError, ValueError):
        number = -1
    source = original[number] if 0 <= number < len(original) else {}
    return {**source, "question": row["question"], "answer": row["answer"]}


def evidence_view(rows: list[dict]) -> None:
    if not rows:
        return
    number = int(st.number_input("Show the evidence of row", 0, len(rows) - 1, 0, key=key(PAGE, "build.row")))
    row = rows[number]
    chunk = next((c for c in duet().index.chunks_of(row["doc_id"]) if c.chunk_id == row["chunk_id"]), None)
    if chunk is None:
        st.caption("That chunk is no longer in the index.")
        return
    st.caption(f"{literal(row['source'])} · {literal(chunk.location or 'text')} · highlighted: the answer's evidence")
    st.markdown(marked(chunk.text, row["evidence"]["start"], row["evidence"]["end"]))


def saved_choice() -> tuple | None:
    """A saved dataset to train on: (train.jsonl path, manifest) or None when there is none."""
    job = duet().jobs["dataset build"]
    if job is not None and job.state == "done" and "id" not in job.result.manifest:
        st.info("The dataset built above is not saved yet: save it first (Save dataset, above), then choose it here.")
    found = saved_datasets(duet().settings.store_dir)
    if not found:
        st.caption("No dataset built yet: build one above.")
        return None
    labels = {f"{n} · {m.get('counts', {}).get('train', '?')} rows · K={m.get('paraphrases')} · {m.get('format')}": (p, m)
              for n, p, m in found}
    label = st.selectbox("Built dataset", list(labels), key=key(PAGE, "built"))
    path, manifest = labels[label]
    return path / "train.jsonl", manifest
