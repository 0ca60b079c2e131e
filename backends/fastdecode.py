"""One decoding step of a Llama-family model without transformers' per-call machinery.

A step of the bundled 135M model is ~40 ms of matrix products and, through
`model(...)`, another ~30 ms of Python and small tensor work around them: building the
causal mask, output records, decorators, and a KV cache that copies every layer's keys and
values into a new tensor at every token (`torch.cat`). `LlamaStepper` runs the very same
modules and functions (the model's own linear layers, with their LoRA routing; its norms,
rotary embedding and transformers' SDPA attention) layer by layer, on a KV cache allocated
once for the whole answer. Prompts still go through `model(...)`, one row at a time: a
batch's short prompt (a fine-tuned question) is not padded to the long one (a RAG prompt
with its sources), which doubled the prompt work of Compare. tests/test_generation.py
checks the greedy tokens against `model.generate`.

Other architectures, or attention other than SDPA, use the plain `model(...)` step
(`LlamaStepper.supports`).
"""

from __future__ import annotations

import sys

import torch

SUPPORTED_MODEL_TYPES = {"llama"}


def base_causal_lm(model):
    """The transformers model under a peft wrapper (the same object when there is none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def dynamic_cache(config, layers):
    """A transformers DynamicCache holding these (keys, values) per layer; later tokens never write into them."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)
    return cache


class LlamaStepper:
    """Decodes one token per row per call, from a prompt's KV cache (a transformers DynamicCache)."""

    def __init__(self, model, prompts: list, max_new_tokens: int):
        """`prompts`: one DynamicCache per row, each from its own prompt alone (no padding computed)."""
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        causal_lm = base_causal_lm(model)
        self.lm, self.head = causal_lm.model, causal_lm.lm_head
        self.rotate = sys.modules[type(causal_lm).__module__].apply_rotary_pos_emb
        self.attend = sdpa_attention_forward
        lengths = [cache.get_seq_length() for cache in prompts]
        self.length = max(lengths)
        device = self.head.weight.device
        self.positions = torch.tensor([[n - 1] for n in lengths], device=device)
        # Rows are left-aligned to the longest prompt; the mask hides the gap (a single row needs none).
        self.mask = None
        if len(prompts) > 1:
            self.mask = torch.zeros((len(prompts), self.length), dtype=torch.long, device=device)
            for row, n in enumerate(lengths):
                self.mask[row, self.length - n:] = 1
        self.keys = [self._rows([c.layers[i].keys for c in prompts], max_new_tokens) for i in range(len(self.lm.layers))]
        self.values = [self._rows([c.layers[i].values for c in prompts], max_new_tokens) for i in range(len(self.lm.layers))]

    def keep(self, rows: list[int]) -> None:
        """Go on with these rows only (the others finished); a lone row drops the padding it no longer needs."""
        index = torch.tensor(rows, device=self.positions.device)
        self.positions = self.positions.index_select(0, index)
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        if self.mask is None:
            return
        self.mask = self.mask.index_select(0, index)
        gap = int(self.mask.argmax(dim=1).min())  # each row's mask is 0...0 1...1: argmax is its first 1
        if gap:  # columns no remaining row attends to: cut them off the front of every buffer
            self.mask = self.mask[:, gap:]
            self.keys = [k[:, :, gap:] for k in self.keys]
            self.values = [v[:, :, gap:] for v in self.values]
            self.length -= gap
        if bool(self.mask.all()):
            self.mask = None

    def _rows(self, parts: list[torch.Tensor], extra: int) -> torch.Tensor:
        """One layer's keys (or values) of every row in one buffer with room for `extra` more tokens."""
        _, heads, _, dim = parts[0].shape
        # Zeros, not garbage, in the gaps: a masked position still multiplies its value by 0.
        buffer = parts[0].new_zeros((len(parts), heads, self.length + extra, dim))
        for row, part in enumerate(parts):
            buffer[row, :, self.length - part.shape[2]:self.length] = part[0]
        return buffer

    @staticmethod
    def supports(model) -> bool:
        config = base_causal_lm(model).config
        return config.model_type in SUPPORTED_MODEL_TYPES and config._attn_implementation == "sdpa"

    def __call__(self, tokens: list[int]) -> torch.Tensor:
        """The next-token logits (rows x vocabulary, float32 on the CPU) after feeding one token per row."""
        device = self.head.weight.device
        self.positions = self.positions + 1
        if self.mask is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        hidden = self.lm.embed_tokens(torch.tensor(tokens, dtype=torch.long, device=device)[:, None])
        cos_sin = self.lm.rotary_emb(hidden, position_ids=self.positions)
        mask = self.mask[:, None, None, :].bool() if self.mask is not None else None
        for index, layer in enumerate(self.lm.layers):
            hidden = self._layer(layer, index, hidden, cos_sin, mask)
        self.length += 1
        return self.head(self.lm.norm(hidden)[:, -1:, :])[:, -1, :].float().cpu()

    def _layer(self, layer, index: int, hidden: torch.Tensor, cos_sin, mask) -> torch.Tensor:
        attention = layer.self_attn
        normed = layer.input_layernorm(hidden)
        shape = (hidden.shape[0], 1, -1, attention.head_dim)
        query = attention.q_proj(normed).view(shape).transpose(1, 2)
        key = attention.k_proj(normed).view(shape).transpose(1, 2)
        value = attention.v_proj(normed).view(shape).transpose(1, 2)
        query, key = self.rotate(query, key, *cos_sin)
        end = self.length + 1
        self.keys[index][:, :, self.length:end] = key
        self.values[index][:, :, self.length:end] = value
        attended, _ = self.attend(attention, query, self.keys[index][:, :, :end], self.values[index][:, :, :end], mask,
                                  dropout=0.0, scaling=attention.scaling)
        hidden = hidden + attention.o_proj(attended.reshape(hidden.shape[0], 1, -1).contiguous())
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))
