"""The onnxruntime engine (`DUET_ENGINE=onnxruntime`, `auto`'s choice for a Llama GGUF on a CPU): the file's 4-bit weights
as they are, run by a wheel chromadb already installs. `graph` builds and caches the model's graph, `runtime` runs it,
`adapters` binds LoRA adapters to it."""
