"""One forward pass of a Llama-family model for several answers at once, without transformers' per-call machinery.

`LlamaPass` runs the model's own modules (linear layers with their LoRA routing, norms, rotary embedding, SDPA
attention) layer by layer over the rows laid end to end: everything but attention works token by token, and
attention runs per row on that row's own KV cache (`RowCache`, allocated once), so rows of any length share the
weight reads without padding. Llama and Qwen2 take it; other architectures, sliding-window attention or another
attention implementation go through `ModelPass`, `model(...)` once per row (`passes_for` picks).
"""

from __future__ import annotations

import sys
from typing import Callable, ContextManager

import torch

from backends.engines.base import Feed

# Decoder layers of the Llama shape (Qwen2's differ in biases, which its linear layers carry, and a sliding window).
SUPPORTED_MODEL_TYPES = {"llama", "qwen2"}

# Routes each fed token to its row's adapter: TorchEngine.route, given one adapter name (or None) per token.
Route = Callable[[list], ContextManager]


def base_causal_lm(model):
    """The transformers model under a peft wrapper (the same object when there is none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class RowCache:
    """One answer's keys and values for every layer, in buffers allocated once for its prompt and answer."""

    def __init__(self, layers: int, heads: int, head_dim: int, capacity: int, like: torch.Tensor):
        shape = (1, heads, capacity, head_dim)  # never read beyond `length`: no need to clear
        self.keys = [like.new_empty(shape) for _ in range(layers)]
        self.values = [like.new_empty(shape) for _ in range(layers)]
        self.length = 0  # tokens held

    def start_from(self, prefix: "RowCache") -> "RowCache":
        """Hold the prefix's tokens (a system message computed once) as this cache's first ones."""
        n = prefix.length
        for mine, theirs in zip(self.keys + self.values, prefix.keys + prefix.values):
            mine[:, :, :n] = theirs[:, :, :n]
        self.length = n
        return self


class LlamaPass:
    """Feeds several rows their tokens in one forward pass; each row keeps its own KV cache."""

    def __init__(self, model):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        causal_lm = base_causal_lm(model)
        self.config = causal_lm.config
        self.lm, self.head = causal_lm.model, causal_lm.lm_head
        self.rotate = sys.modules[type(causal_lm).__module__].apply_rotary_pos_emb
        self.attend = sdpa_attention_forward

    @staticmethod
    def supports(model) -> bool:
        config = base_causal_lm(model).config
        windowed = "sliding_attention" in (getattr(config, "layer_types", None) or [])  # attention this pass lacks
        return config.model_type in SUPPORTED_MODEL_TYPES and config._attn_implementation == "sdpa" and not windowed

    def cache(self, capacity: int, prefix: RowCache | None = None) -> RowCache:
        """An empty cache with room for `capacity` tokens, or one that starts with the prefix's."""
        attention = self.lm.layers[0].self_attn
        cache = RowCache(len(self.lm.layers), self.config.num_key_value_heads, attention.head_dim, capacity,
                         self.head.weight)
        return cache.start_from(prefix) if prefix is not None else cache

    def __call__(self, feeds: list[Feed], route: Route) -> torch.Tensor:
        """The logits after each row's last fed token (rows x vocabulary, float32 on the CPU)."""
        device = self.head.weight.device
        ids = [token for feed in feeds for token in feed.tokens]
        positions = [feed.cache.length + i for feed in feeds for i in range(len(feed.tokens))]
        spans, start = [], 0
        for feed in feeds:
            spans.append((feed.cache, start, start + len(feed.tokens), _causal_mask(feed.cache.length, len(feed.tokens), device)))
            start += len(feed.tokens)
        with route([feed.adapter for feed in feeds for _ in feed.tokens]):
            hidden = self.lm.embed_tokens(torch.tensor([ids], dtype=torch.long, device=device))
            cos_sin = self.lm.rotary_emb(hidden, position_ids=torch.tensor([positions], device=device))
            for index, layer in enumerate(self.lm.layers):
                hidden = self._layer(layer, index, hidden, cos_sin, spans)
            last = torch.tensor([end - 1 for _, _, end, _ in spans], device=device)
            logits = self.head(self.lm.norm(hidden.index_select(1, last)))[0].float().cpu()
        for feed in feeds:  # only now: a pass that failed half-way leaves every cache as it was
            feed.cache.length += len(feed.tokens)
        return logits

    def _layer(self, layer, index: int, hidden: torch.Tensor, cos_sin, spans: list) -> torch.Tensor:
        attention = layer.self_attn
        normed = layer.input_layernorm(hidden)
        shape = (1, hidden.shape[1], -1, attention.head_dim)
        query = attention.q_proj(normed).view(shape).transpose(1, 2)
        key = attention.k_proj(normed).view(shape).transpose(1, 2)
        value = attention.v_proj(normed).view(shape).transpose(1, 2)
        query, key = self.rotate(query, key, *cos_sin)
        attended = [self._attend(attention, index, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], cache, mask)
                    for cache, a, b, mask in spans]
        attended = attended[0] if len(attended) == 1 else torch.cat(attended, dim=1)
        hidden = hidden + attention.o_proj(attended.reshape(1, hidden.shape[1], -1))
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    def _attend(self, attention, index: int, query, key, value, cache: RowCache, mask) -> torch.Tensor:
        """One row's attention over its cache and its new tokens (written into the cache)."""
        start, end = cache.length, cache.length + query.shape[2]
        cache.keys[index][:, :, start:end] = key
        cache.values[index][:, :, start:end] = value
        attended, _ = self.attend(attention, query, cache.keys[index][:, :, :end], cache.values[index][:, :, :end], mask,
                                  dropout=0.0, scaling=attention.scaling)
        return attended


def _causal_mask(held: int, new: int, device) -> torch.Tensor | None:
    """Which held and new positions each new token sees (None: all held, or a fresh prompt's plain causal order)."""
    if new == 1 or held == 0:
        return None
    return torch.ones((new, held + new), dtype=torch.bool, device=device).tril(diagonal=held)[None, None]


class ModelPass:
    """Any architecture: each row's tokens through `model(...)` on its own DynamicCache, one row after the other."""

    def __init__(self, model):
        self.model = model
        self.config = base_causal_lm(model).config

    def cache(self, capacity: int, prefix=None):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.config)
        for index, layer in enumerate(prefix.layers if prefix is not None else []):  # later tokens never write into these
            cache.update(layer.keys, layer.values, index)
        return cache

    def __call__(self, feeds: list[Feed], route: Route) -> torch.Tensor:
        logits = []
        device = base_causal_lm(self.model).lm_head.weight.device
        for feed in feeds:
            with route([feed.adapter]):
                out = self.model(input_ids=torch.tensor([feed.tokens], device=device), past_key_values=feed.cache,
                                 use_cache=True, logits_to_keep=1)
            logits.append(out.logits[:, -1, :].float().cpu())
        return torch.cat(logits)


def passes_for(model) -> "LlamaPass | ModelPass":
    """The forward pass this model decodes with: the lean shared one where the architecture allows."""
    return LlamaPass(model) if LlamaPass.supports(model) else ModelPass(model)
