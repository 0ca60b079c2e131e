"""Duet's entry point: page configuration and navigation, nothing else."""

import streamlit as st

st.set_page_config(page_title="Duet: RAG vs fine-tuning", page_icon="⚖️", layout="wide")

pages = [
    st.Page("pages/compare.py", title="Compare", icon="⚖️", default=True),
    st.Page("pages/documents.py", title="Documents", icon="📄"),
]
st.navigation(pages).run()
