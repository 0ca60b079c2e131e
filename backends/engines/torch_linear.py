"""Faster linear layers for decoding on a CPU: the same weights, a better matrix product for few rows.

For the 1-3 rows of a decoding step, `W @ x.T` reads the weights once for all rows where `F.linear` reads them once
per row; an odd row count is padded by one (MKL's even-column kernel is faster). Prompts keep `F.linear`. Only the
order of additions inside each dot product changes (docs/performance.md has the timings).
"""

from __future__ import annotations

import torch

FEW_ROWS = 16


class DecodeLinear(torch.nn.Linear):
    """nn.Linear with `W @ x.T` for a few rows on the CPU (peft still sees an nn.Linear)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows > FEW_ROWS or x.device.type != "cpu" or x.dtype != self.weight.dtype:
            return super().forward(x)
        # Row-major rows in, row-major rows out: with a column-major x the kernel is slow again.
        flat = x.reshape(rows, self.in_features)
        if rows % 2:  # MKL multiplies an even number of columns faster than an odd one (1 row: ~15%)
            flat = torch.cat([flat, flat[:1]])
        out = torch.mm(self.weight, flat.contiguous().T).T[:rows].contiguous()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def use_decode_linear(model: torch.nn.Module) -> None:
    """Switch every plain nn.Linear of an inference model to DecodeLinear, in place (weights untouched)."""
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = DecodeLinear
