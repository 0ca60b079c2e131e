"""Duet backends: the RAG and fine-tuned answering pipelines, usable without Streamlit.

Everything heavy (torch, transformers, chromadb, langchain) lives below this package;
pages and the CLI only talk to the functions and types exported by its modules.
"""

__version__ = "0.1.0"
