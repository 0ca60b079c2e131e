"""Answering: prompts, the RAG and fine-tuned backends, and the claim tracer."""
