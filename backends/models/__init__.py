"""Model files and caches: the bundled models located, GGUF conversion, adapter file formats."""
