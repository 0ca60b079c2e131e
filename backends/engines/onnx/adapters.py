"""Adapter binding for the onnxruntime engine: a LoRA adapter as inputs of the graph, made once per version.

A LoRA adapter is a low-rank term on each projection, masked per token, so a fine-tuned
row's tokens get the adapter and RAG's do not; its matrices are inputs of the graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backends.engines.onnx.graph import BLOCK, GROUPS, Shape
from backends.models.lora import peft_lora


class AdapterTensors:
    """One adapter version's graph inputs (`lora_a.*`, `lora_c.*`), as onnxruntime values made once.

    A group's `lora_a` is [block sums | A of each projection] (inputs x blocks+r) and its
    `lora_c` is [the Q4_1 correction ; each projection's B, scaled as peft scales it, over its
    own output rows]. The bare base model has a rank-1 zero adapter.
    """

    def __init__(self, corrections: dict[str, np.ndarray], shape: Shape, folder: str | None):
        import onnxruntime as ort

        lora = peft_lora(Path(folder)) if folder else {}
        layers = {layer for layer, _ in lora}
        self.ranks = {group: max([1] + [sum(lora[(layer, n)][0].shape[0] for n in names if (layer, n) in lora)
                                        for layer in layers])
                      for group, names in GROUPS.items()}  # the columns each group's adapter needs, in every layer
        self.values = {}
        for key, correction in corrections.items():
            layer, group = key.split(".")
            a, c = _group_matrices(lora, int(layer), group, correction, shape, self.ranks[group])
            self.values[f"lora_a.{key}"] = ort.OrtValue.ortvalue_from_numpy(a)
            self.values[f"lora_c.{key}"] = ort.OrtValue.ortvalue_from_numpy(c)
        self.blocks = {key.split(".")[1]: correction.shape[0] for key, correction in corrections.items()}

    def mix(self, adapted: np.ndarray) -> dict[str, np.ndarray]:
        """Per group: T x blocks+r, ones for the block sums and `adapted` (1/0 per token) for the adapter's columns."""
        return {f"mix.{group}": np.concatenate([np.ones((len(adapted), self.blocks[group]), np.float32),
                                                np.repeat(adapted[:, None], self.ranks[group], axis=1)], axis=1)
                for group in GROUPS}


def _group_matrices(lora: dict, layer: int, group: str, correction: np.ndarray, shape: Shape, rank: int):
    """`lora_a` (inputs x blocks+rank) and `lora_c` (blocks+rank x rows) of one group."""
    blocks, rows = correction.shape
    a = np.zeros((blocks * BLOCK, blocks + rank), np.float32)
    a[np.arange(blocks * BLOCK), np.arange(blocks * BLOCK) // BLOCK] = 1  # block sums
    c = np.zeros((blocks + rank, rows), np.float32)
    c[:blocks] = correction
    column = start = 0
    for name, count in zip(GROUPS[group], _group_row_counts(shape, group, rows)):
        if (layer, name) in lora:
            lora_a, lora_b, scale = lora[(layer, name)]
            if name == "attn_q":
                scale *= shape.head_dim ** -0.5  # as the query rows themselves (`_decoder_layer`)
            r = lora_a.shape[0]
            a[:, blocks + column:blocks + column + r] = lora_a.T
            c[blocks + column:blocks + column + r, start:start + count] = (lora_b * scale).T
            column += r
        start += count
    return a, c


def _group_row_counts(shape: Shape, group: str, rows: int) -> list[int]:
    kv = shape.kv_heads * shape.head_dim
    return {"qkv": [shape.hidden, kv, kv], "o": [rows], "gate_up": [rows // 2, rows // 2], "down": [rows]}[group]
