"""Knowledge: documents loaded (in a sandbox), chunked, embedded and indexed in Chroma."""
