"""LoRA adapter files: peft's folder layout, its names in a GGUF model, and export as a GGUF adapter.

The one map between peft's module names and the GGUF tensor names, and the one row
permutation of the query and key projections, serve every engine that reads adapters
(onnxruntime, llama.cpp) and the export.

The export writes a file that llama.cpp (and Ollama, via an ADAPTER line) can load.

The layout is llama.cpp's own (its convert_lora_to_gguf.py): general.type "adapter",
adapter.type "lora", adapter.lora.alpha, and per layer `blk.N.<tensor>.weight.lora_a` /
`.lora_b` in float32, named as in the base model's GGUF. llama.cpp stores the query and key
projections of Llama models with their rows permuted (rotary halves interleaved per head);
the B matrices of those two layers get the same permutation, so B @ A is added to the
right rows. Only Llama-family bases (the bundled SmolLM2 is one) and the seven projection
layers are supported.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from backends.core.errors import BadInput, ModelUnavailable
from backends.models.files import prepare_llm

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
METADATA = "metadata.json"  # Duet's record of the adapter: base model, dataset, index snapshot, losses
TRAINING_DATA = "training_data.jsonl"  # the examples, kept with the adapter for claim tracing
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

# peft module name -> GGUF tensor name, for the seven projections of a Llama layer.
GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}
PEFT_MODULES = {gguf: peft for peft, gguf in GGUF_NAMES.items()}
PEFT_KEY = re.compile(r"(?:.*\.)?layers\.(\d+)\.(\w+\.\w+)\.lora_([AB])\.weight$")


def gguf_row_order(rows: int, heads: int) -> np.ndarray:
    """Row j of a query/key projection in the GGUF is transformers' row order[j] (llama.cpp interleaves rotary halves
    per head); `np.argsort(order)` goes the other way."""
    return np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(rows)


def llama_permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """A query/key projection's rows (or a LoRA B of them) in llama.cpp's order."""
    return rows[gguf_row_order(rows.shape[0], heads)]


def peft_lora(folder: Path) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray, float]]:
    """(layer, GGUF projection name) -> (A, B, scale) of a peft adapter folder, as float32 numpy arrays.

    ModelUnavailable names what an engine applying plain LoRA on the seven projections cannot apply.
    """
    from safetensors.numpy import load_file

    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    if config.get("use_dora"):
        raise ModelUnavailable("this engine applies LoRA adapters, not DoRA; use DUET_ENGINE=transformers")
    parts: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, value in load_file(str(folder / ADAPTER_WEIGHTS)).items():
        match = PEFT_KEY.match(key)
        if match is None or match.group(2) not in GGUF_NAMES:
            raise ModelUnavailable(f"adapter tensor {key!r} is not on a projection this engine adapts; "
                                   "use DUET_ENGINE=transformers")
        parts.setdefault((int(match.group(1)), GGUF_NAMES[match.group(2)]), {})[match.group(3)] = value.astype(np.float32)
    lora = {}
    for (layer, name), ab in parts.items():
        rank = ab["A"].shape[0]
        alpha = _pattern_value(config.get("alpha_pattern") or {}, layer, name, config["lora_alpha"])
        lora[(layer, name)] = (ab["A"], ab["B"], alpha / (rank ** 0.5 if config.get("use_rslora") else rank))
    return lora


def _pattern_value(pattern: dict, layer: int, name: str, default: float) -> float:
    """peft's per-module override (alpha_pattern) for this projection, else the default."""
    module = PEFT_MODULES[name]
    for key, value in pattern.items():
        if module.endswith(key) or f"layers.{layer}.{module}".endswith(key):
            return value
    return default


def gguf_tensors(adapter_dir: Path, base_config: dict) -> dict:
    """The adapter's tensors under their GGUF names, as float32 numpy arrays."""
    from safetensors.numpy import load_file

    if base_config.get("model_type") != "llama":
        raise BadInput(f"GGUF export supports Llama-family base models, not {base_config.get('model_type')!r}")
    heads = {"attn_q": base_config["num_attention_heads"],
             "attn_k": base_config.get("num_key_value_heads", base_config["num_attention_heads"])}
    tensors = {}
    for key, value in load_file(str(adapter_dir / ADAPTER_WEIGHTS)).items():
        match = PEFT_KEY.match(key)
        if match is None or match.group(2) not in GGUF_NAMES:
            raise BadInput(f"adapter tensor {key!r} is not on a layer llama.cpp adapters support; "
                           f"train with target modules among {', '.join(n.split('.')[1] for n in GGUF_NAMES)}")
        layer, module, part = match.groups()
        name = GGUF_NAMES[module]
        value = value.astype("float32")
        if part == "B" and name in heads:
            value = llama_permute(value, heads[name])
        tensors[f"blk.{layer}.{name}.weight.lora_{part.lower()}"] = value
    return tensors


def export_gguf(adapter_dir: Path, base_config: dict, target: Path) -> Path:
    """Write the adapter as GGUF to `target` (atomically: a temporary file renamed at the end)."""
    import gguf

    alpha = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())["lora_alpha"]
    tensors = gguf_tensors(adapter_dir, base_config)
    partial = target.with_name(f".{target.name}.partial")
    writer = gguf.GGUFWriter(str(partial), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for name, value in sorted(tensors.items()):
        writer.add_tensor(name, value)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, target)
    finally:
        writer.close()  # again after a failure: the file is closed before it is removed
        partial.unlink(missing_ok=True)
    return target


def base_config_of(settings) -> dict:
    """The configured base model's config (the converted bundled model, a local folder or a hub id)."""
    from transformers import AutoConfig

    path = prepare_llm(settings)
    return AutoConfig.from_pretrained(path, local_files_only=Path(path).is_dir()).to_dict()


def adapter_gguf_bytes(settings, adapter_dir: Path) -> bytes:
    """The adapter as GGUF file contents (for a download)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="duet-gguf-") as folder:
        return export_gguf(adapter_dir, base_config_of(settings), Path(folder) / "adapter.gguf").read_bytes()
