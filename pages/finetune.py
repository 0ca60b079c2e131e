"""Fine-tune: choose a dataset, set hyperparameters, train a LoRA adapter live; manage adapters.

Training runs in a background thread of the server process (one job at a time per store),
so it continues while the user looks at other pages; this page polls its progress.
"""

from __future__ import annotations

import dataclasses

import plotly.graph_objects as go
import streamlit as st

from backends.core.config import DATA_DIR
from backends.core.errors import DuetError
from backends.models.lora import adapter_gguf_bytes
from backends.learning.adapters import import_adapter
from backends.learning.examples import read_qa_file, read_training_file, store_dataset
from backends.learning.training import TrainConfig, TrainingJob, dataset_label, training_estimate
from pages.builder import build_form, build_view, saved_choice
from pages.common import duet, key, literal, may_change_data, may_read, page_errors, watch_job

PAGE = "finetune"
DEMO_DATASET = DATA_DIR / "qa" / "train.jsonl"


def dataset_section():
    """The dataset to train on: (path, examples) or None when the upload is invalid."""
    choice = st.radio("Dataset", ["Demo dataset (data/qa/train.jsonl)", "Built from my documents", "Upload a JSONL file"],
                      horizontal=True, key=key(PAGE, "dataset"))
    if choice.startswith("Built"):
        built = saved_choice()
        if built is None:
            return None
        path, manifest = built
        items = read_training_file(path)
        st.caption(f"{len(items)} training rows ({manifest.get('format')}, K={manifest.get('paraphrases')}), "
                   f"dataset {manifest.get('id', '?')}.")
        return path, items
    if choice.startswith("Demo"):
        items = read_qa_file(DEMO_DATASET)
        st.caption(f"{len(items)} question/answer pairs about the demo documents.")
        return DEMO_DATASET, items
    upload = st.file_uploader("JSONL with one {\"question\": …, \"answer\": …} object per line", type=["jsonl", "json"],
                              key=key(PAGE, "upload"))
    if upload is None:
        return None
    try:
        path, items = store_dataset(duet().settings, upload.getvalue(), upload.name)
    except DuetError as error:
        st.error(f"This dataset cannot be used: {literal(str(error))}")
        return None
    st.success(f"{len(items)} valid question/answer pairs in {literal(upload.name)}.")
    st.dataframe([{"question": i.question, "answer": i.answer} for i in items[:5]], hide_index=True, width="stretch")
    return path, items


def hyperparameters() -> TrainConfig:
    """A widget for every TrainConfig field, with its help text; values outlive the training run that hides them."""
    defaults, values = TrainConfig(), {}
    columns = st.columns(3)
    for number, f in enumerate(dataclasses.fields(TrainConfig)):
        default, label, helptext = kept(f.name, getattr(defaults, f.name)), f.name.replace("_", " "), f.metadata.get("help")
        with columns[number % 3]:
            if isinstance(default, tuple):
                values[f.name] = tuple(st.multiselect(label, list(getattr(defaults, f.name)), select_all=False, default=list(default),
                                                      help=helptext, key=key(PAGE, f.name)))
            elif "choices" in f.metadata:
                choices = list(f.metadata["choices"])
                values[f.name] = st.selectbox(label, choices, index=choices.index(default), help=helptext,
                                              key=key(PAGE, f.name))
            elif isinstance(default, float):
                values[f.name] = st.number_input(label, value=default, format="%g", help=helptext, key=key(PAGE, f.name))
            else:
                values[f.name] = int(st.number_input(label, value=default, step=1, min_value=0, help=helptext,
                                                     key=key(PAGE, f.name)))
        keep(f.name, values[f.name])
    return TrainConfig(**values)


def kept(name: str, default):
    """The user's last value of a form field (Streamlit forgets a widget's state while it is not drawn)."""
    return st.session_state.get(key(PAGE, f"kept.{name}"), default)


def keep(name: str, value) -> None:
    st.session_state[key(PAGE, f"kept.{name}")] = value


def start_section() -> None:
    current = duet().jobs["training"]
    if current is not None and current.running:
        return
    chosen = dataset_section()
    with st.expander("Hyperparameters", expanded=False):
        config = hyperparameters()
    name = st.text_input("Adapter name", value=kept("name", "my-adapter"), key=key(PAGE, "name"), max_chars=64)
    overwrite = st.checkbox("Replace an adapter of the same name", value=kept("overwrite", False), key=key(PAGE, "overwrite"))
    keep("name", name)
    keep("overwrite", overwrite)
    if chosen is not None and config.batch_size > 0 and config.epochs > 0:
        steps, seconds = training_estimate(duet().llm.tokenizer, chosen[1], config)
        st.caption(f"{len(chosen[1])} rows × {config.epochs} epochs = {steps} steps: about {seconds / 60:.0f} min on "
                   "2 CPU cores (less on a GPU). Fewer epochs train faster and learn less.")
    if not st.button("Start training", type="primary", disabled=chosen is None or not config.target_modules,
                     key=key(PAGE, "start")):
        return
    try:
        config.check()
        duet().registry.path_for_new(name, overwrite)
        path, _ = chosen
        duet().jobs.start("training", TrainingJob(duet().settings, path, name, config, duet().index.snapshot(), overwrite))
        st.rerun()
    except DuetError as error:
        st.error(literal(str(error)))


def loss_chart(history: list[dict], title: str) -> go.Figure:
    figure = go.Figure(go.Scatter(x=[h["step"] for h in history], y=[h["loss"] for h in history], mode="lines+markers",
                                  line=dict(color="#c2571a")))
    figure.update_layout(title=title, height=280, margin=dict(l=10, r=10, t=40, b=10), xaxis_title="step", yaxis_title="loss")
    return figure


def job_view() -> None:
    job: TrainingJob | None = duet().jobs["training"]
    if job is None:
        return

    def progress(latest):
        if latest is None:
            return 0.0, f"Preparing the model for {job.name}…"
        return latest.step / latest.total_steps, (
            f"Training {job.name}: step {latest.step} of {latest.total_steps}, epoch {latest.epoch:.2f}, "
            f"loss {latest.loss:.3f}, {latest.tokens_per_s:.0f} tokens/s, about {latest.eta_s:.0f} s left")

    def finished():
        if job.state == "done" and job.name in duet().registry.names():  # not once the adapter is deleted
            st.success(f"Adapter {job.name} saved ({len(job.progress)} steps, final loss {job.latest.loss:.3f}).")
        if job.progress:
            st.plotly_chart(loss_chart([{"step": p.step, "loss": p.loss} for p in job.progress], f"Loss of {job.name}"),
                            key=key(PAGE, "live-loss"))

    watch_job(job, PAGE, progress, finished)


def import_section() -> None:
    """A peft LoRA trained elsewhere on the same base model (LLaMA-Factory, Unsloth, axolotl), checked, then copied."""
    import tempfile
    from pathlib import Path

    with st.expander("Import an adapter trained elsewhere"):
        files = st.file_uploader("adapter_config.json and adapter_model.safetensors", type=["json", "safetensors"],
                                 accept_multiple_files=True, key=key(PAGE, "import.files"))
        name = st.text_input("Name in Duet", value="imported", max_chars=64, key=key(PAGE, "import.name"))
        if not st.button("Import", disabled=not files, key=key(PAGE, "import.go")):
            return
        try:
            with tempfile.TemporaryDirectory(prefix="duet-import-") as scratch:
                for upload in files:
                    (Path(scratch) / Path(upload.name).name).write_bytes(upload.getvalue())
                import_adapter(duet().registry, scratch, name, duet().llm.config)
            st.success(f"Imported {name}: choose it in Compare's sidebar.")
        except DuetError as error:
            st.error(f"Not imported: {literal(str(error))}")


def adapters_section(allowed: bool) -> None:
    registry = duet().registry
    if done := st.session_state.pop(key(PAGE, "deleted"), None):
        st.success(literal(done))
    adapters = registry.list()
    if not adapters:
        st.info("No adapters yet: train one above.")
        return
    active = registry.active_name()
    st.dataframe([{
        "name": a.name, "active": a.name == active, "trained": a.created_at,
        "examples": a.metadata.get("dataset", {}).get("examples"), "dataset": dataset_label(a.metadata.get("dataset", {})),
        "final loss": a.metadata.get("final_loss"), "seconds": a.metadata.get("training_seconds"),
        "rank": a.metadata.get("hyperparameters", {}).get("rank"),
    } for a in adapters], hide_index=True, width="stretch")
    chosen = st.selectbox("Adapter", [a.name for a in adapters], key=key(PAGE, "chosen"))
    info = next(a for a in adapters if a.name == chosen)
    stale = duet().ft.staleness(chosen)
    (st.warning if stale.is_stale else st.caption)(f"Index: {stale.describe()}.")
    if info.metadata.get("loss_history"):
        st.plotly_chart(loss_chart(info.metadata["loss_history"], f"Training loss of {chosen}"), key=key(PAGE, "loss"))
    if may_read("Adapter downloads (an adapter can give away what it memorised)"):
        st.download_button("Download for llama.cpp / Ollama (GGUF)", key=key(PAGE, "gguf"), file_name=f"{chosen}.gguf",
                           mime="application/octet-stream", data=lambda: adapter_gguf_bytes(duet().settings, info.path),
                           help="llama.cpp: --lora FILE with the bundled GGUF; Ollama: an ADAPTER line in the Modelfile")
    make_active, confirm, delete = st.columns(3)
    if make_active.button("Make active", disabled=chosen == active or not allowed, key=key(PAGE, "activate")):
        registry.set_active(chosen)
        st.rerun()
    sure = confirm.checkbox("Yes, delete it", key=key(PAGE, "sure"), disabled=not allowed)
    if delete.button("Delete adapter", disabled=not (sure and allowed), key=key(PAGE, "delete")):
        registry.delete(chosen)
        st.session_state[key(PAGE, "deleted")] = f"Deleted adapter {chosen}."
        st.session_state.pop(key(PAGE, "sure"), None)
        st.rerun()


st.title("Fine-tune")
st.caption("Build question/answer pairs from your documents, then train a LoRA adapter on them. The base model stays "
           "the same; the adapter is small and can be switched per question.")
with page_errors():
    allowed = may_change_data("Training and changing adapters")
    if allowed:
        st.subheader("Build a dataset from my documents")
        build_form()
        build_view()
        st.subheader("Train an adapter")
        start_section()
        job_view()
    st.subheader("Adapters")
    if allowed:
        import_section()
    adapters_section(allowed)
