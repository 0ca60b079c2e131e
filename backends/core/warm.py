"""The heavy libraries, imported once on one thread before work fans out to threads.

transformers' lazy module is not safe to import from several threads at once (six threads importing
`from transformers import X` fail in 10 of 15 fresh processes, transformers 5.23), and neither is the lazy importer
of anyio under huggingface_hub. Resolving the names here, first, makes every later import a dictionary lookup.
"""

from __future__ import annotations

import importlib

# module: the names threads import from it later (each resolved now, so lazy modules load them here)
LIBRARIES: dict[str, tuple[str, ...]] = {
    "torch": ("nn",),
    "transformers": ("AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoTokenizer", "DynamicCache",
                     "GenerationConfig", "PreTrainedModel", "PreTrainedTokenizerFast"),
    "transformers.utils": ("logging",),
    "huggingface_hub": ("hf_hub_download", "snapshot_download"),
    "safetensors.torch": ("load_file", "save_file"),
    "langchain_core.embeddings": ("Embeddings",),
    "chromadb": ("PersistentClient", "HttpClient"),
    "chromadb.config": ("Settings",),
}


_imported = False  # once done, every later warm start (each Compare question, each batch) skips the loop


def import_libraries() -> None:
    """Import every library of LIBRARIES and resolve its names, on the calling thread (once per process)."""
    global _imported
    if _imported:
        return
    for module_name, names in LIBRARIES.items():
        module = importlib.import_module(module_name)
        for name in names:
            getattr(module, name)
    _imported = True
