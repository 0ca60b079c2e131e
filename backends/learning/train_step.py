"""One training step's arithmetic, without the work that does not change the result.

- The prompt prefix every row of a batch shares (the system prompt) is computed once and its
  keys and values are repeated for the batch; causal attention makes that exact.
- Logits are computed only where a label is, not for all 49,152 vocabulary entries at every token.
- Where the hardware multiplies bf16 natively, the frozen base weights are kept in bf16 and
  the products run under autocast; the LoRA weights and the optimiser stay fp32.
- LoRA dropout draws its mask from 16-bit slices of random int64s: torch's bernoulli_ took a
  sixth of every step (docs/performance.md has the profile).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache

MIN_SHARED_PREFIX = 4  # shorter common prefixes are not worth a second forward call


class FastDropout(torch.nn.Module):
    """Inverted dropout with its keep threshold at 1/65,536 resolution."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.limit = -32768 + round(p * 65536)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        count = x.numel()
        draws = torch.randint(-2**63, 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64, device=x.device)
        keep = draws.view(torch.int16)[:count].view(x.shape) >= self.limit
        return x * (keep.to(x.dtype) * (1 / (1 - self.p)))


def precision_for(requested: str, device: torch.device) -> str:
    """`auto` means bf16 only where it is native: emulated bf16 is slower than fp32."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bf16" if device.type == "cpu" and native else "fp32"


def prepare(model, dropout: float, precision: str) -> None:
    """Swap peft's dropout for FastDropout and, for bf16, store the frozen LoRA-wrapped weights in bf16."""
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, torch.nn.ModuleDict):
            for name, drop in drops.items():
                if isinstance(drop, torch.nn.Dropout):
                    drops[name] = FastDropout(dropout)
        base = getattr(module, "base_layer", None)
        if precision == "bf16" and isinstance(base, torch.nn.Linear):
            base.weight.data = base.weight.data.to(torch.bfloat16)


def collate(batch, pad_id: int):
    """Right-padded ids, labels (-100 where no loss) and attention mask for (ids, labels) pairs."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (example_ids, example_labels) in enumerate(batch):
        ids[row, :len(example_ids)] = torch.tensor(example_ids)
        labels[row, :len(example_labels)] = torch.tensor(example_labels)
        mask[row, :len(example_ids)] = 1
    return ids, labels, mask


def shared_prefix(ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> int:
    """Tokens every row starts with, none of them predicting a label, leaving each row one token."""
    same = (ids == ids[:1]).all(0) & mask.bool().all(0)
    no_loss_next = (labels == -100).all(0)
    usable = (same[:-1] & no_loss_next[1:]).int()
    length = int(usable.cumprod(0).sum()) if usable.numel() else 0
    return min(length, int(mask.sum(1).min()) - 1)


def batch_loss(model, batch, pad_id: int, precision: str, device: torch.device):
    """Mean cross-entropy over the batch's answer tokens, and its count of non-padding tokens.

    The loss is None when truncation left no label in the batch.
    """
    ids, labels, mask = (t.to(device) for t in collate(batch, pad_id))
    base = model.get_base_model()
    prefix = shared_prefix(ids, labels, mask)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        cache = None
        if prefix >= MIN_SHARED_PREFIX:
            cache = DynamicCache()
            base.model(input_ids=ids[:1, :prefix], past_key_values=cache, use_cache=True)
            cache.batch_repeat_interleave(len(batch))
        else:
            prefix = 0
        hidden = base.model(input_ids=ids[:, prefix:], attention_mask=mask, past_key_values=cache,
                            use_cache=cache is not None).last_hidden_state
        target = labels[:, prefix + 1:]
        keep = target != -100
        if not keep.any():
            return None, int(mask.sum())
        logits = base.lm_head(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), target[keep]), int(mask.sum())
