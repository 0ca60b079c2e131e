"""Duet's entry point: page configuration and navigation, nothing else.

`?present=1` opens presentation mode: the Compare page alone, no sidebar, larger type,
nothing that changes data (for stakeholder demos).
"""

import streamlit as st

from pages.common import PRESENTATION_STYLE, presenting, refuse_an_unsafe_start

st.set_page_config(page_title="Duet: RAG vs fine-tuning", page_icon="⚖️", layout="wide",
                   initial_sidebar_state="collapsed" if presenting() else "auto")

refuse_an_unsafe_start()
compare = st.Page("pages/compare.py", title="Compare", icon="⚖️", default=True)
if presenting():
    st.html(PRESENTATION_STYLE)
    st.navigation([compare], position="hidden").run()
else:
    st.navigation([
        compare,
        st.Page("pages/documents.py", title="Documents", icon="📄"),
        st.Page("pages/finetune.py", title="Fine-tune", icon="🎛️"),
        st.Page("pages/evaluate.py", title="Evaluate", icon="📊"),
        st.Page("pages/guide.py", title="How to choose", icon="🧭"),
    ]).run()
