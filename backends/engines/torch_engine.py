"""The transformers engine (`DUET_ENGINE=transformers`): any model transformers loads, on a CPU or a GPU.

Forward passes go through `torch_passes` (the lean shared pass where the architecture
allows). LoRA adapters are put on the one model by peft, in place, and each pass routes
each token to its row's adapter (`route`), so RAG (adapter off) and fine-tuned (adapter on)
answer in the same pass, each with the right weights.
"""

from __future__ import annotations

import contextlib
import functools
import math
from pathlib import Path

import torch

from backends.core.errors import BadInput
from backends.engines.base import AdapterVersion, Engine, Feed
from backends.engines.torch_passes import passes_for


def resolve_weights(setting: str, device: str) -> str:
    """'auto': float32 on CPU (exact copy of the GGUF's values, answers equal to the reference path), bfloat16 on a GPU.

    bfloat16 and torch's int8/int4 weight-only kernels were slower on CPU and changed answers (docs/engines.md).
    """
    if setting != "auto":
        return setting
    return "float32" if device == "cpu" else "bfloat16"


def load_torch_model(path: str, local: bool, device: str, weights: str):
    from transformers import AutoModelForCausalLM

    from backends.engines.torch_linear import use_decode_linear

    dtype = torch.bfloat16 if weights == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=local).to(device)
    model.eval()
    if device == "cpu":
        use_decode_linear(model)
    return model


class TorchEngine(Engine):
    """A torch model (peft-wrapped once an adapter is on it), its passes, and the routing of rows to adapters."""

    name = "transformers"

    def __init__(self, model, device: str):
        self.model, self.device = model, device
        # (adapter, rows or None for all rows) of the pass being run; None outside one.
        self.routes: list | None = None

    def passes(self):
        return passes_for(self.model)

    def cache_kind(self) -> str:
        return type(self.passes()).__name__  # the lean pass and `model(...)` keep different caches

    def cache(self, capacity: int, version: AdapterVersion, prefix=None):
        return self.passes().cache(capacity, prefix)

    def serving(self):
        return torch.inference_mode()

    def forward(self, feeds: list[Feed]):
        return self.passes()(feeds, self.route)

    def load_adapter(self, name: str, folder: Path, replacing: bool) -> None:
        import warnings

        from peft import PeftModel

        if replacing:
            self.model.delete_adapter(name)
        with warnings.catch_warnings():  # peft calls a transformers method deprecated for v6: noise on every CLI answer
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing")
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(folder), adapter_name=name)
            else:
                # Injects LoRA layers into the base model in place: no second copy of the weights.
                self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)
        self.model.eval()
        self._route_lora_layers(name)

    def _route_lora_layers(self, name: str) -> None:
        from peft.tuners.lora import Linear as LoraLinear

        for module in self.model.modules():
            if isinstance(module, LoraLinear):
                if name in module.lora_variant:
                    raise BadInput(f"adapter {name!r} is not a plain LoRA adapter (DoRA and other variants are not supported)")
                module.forward = functools.partial(_routed_lora_forward, module, self)
                if not hasattr(module, "duet_lora"):
                    module.duet_lora = {}
                module.duet_lora.pop(name, None)  # a retrained adapter may target other layers
                if name in module.lora_A:  # (A transposed, B transposed, scaling): what the routed forward multiplies
                    module.duet_lora[name] = _routed_weights(module, name)

    @contextlib.contextmanager
    def route(self, adapters: list[str | None]):
        """Inside: row i of the layers' input rows (a pass's tokens) gets adapter adapters[i] (None: the bare base model).

        `routes` holds (adapter, None) when every row has it, else (adapter, the indices of its rows).
        """
        names = sorted({a for a in adapters if a})
        outer = self.routes
        if len(set(adapters)) == 1:
            self.routes = [(name, None) for name in names]
        else:
            self.routes = [(name, torch.tensor([i for i, a in enumerate(adapters) if a == name], device=self.device))
                           for name in names]
        try:
            yield
        finally:
            self.routes = outer


def _routed_lora_forward(layer, engine: TorchEngine, x, *args, **kwargs):
    """A LoRA layer's forward with each row's adapter taken from `engine.routes`.

    peft's own arithmetic (base output + B(A(x)) * scaling) without its per-call checks, which
    cost as much as the products for a 135M model; where only some rows have the adapter, the
    update is computed for those rows alone. Outside a routed pass it is peft's forward.
    """
    if engine.routes is None:
        return type(layer).forward(layer, x, *args, **kwargs)
    result = layer.base_layer(x, *args, **kwargs)
    rows = x.reshape(-1, x.shape[-1])
    for name, picked in engine.routes:
        weights = layer.duet_lora.get(name)
        if weights is None:
            continue
        a_t, b_t, scaling = weights
        own = rows if picked is None else rows.index_select(0, picked)
        # torch.mm with the transposed weight is the kernel F.linear calls: the same numbers, fewer dispatches.
        update = torch.mm(torch.mm(own if own.dtype == a_t.dtype else own.to(a_t.dtype), a_t), b_t)
        if scaling is not None:
            update = update * scaling
        if picked is None:
            result = result + update.to(result.dtype).view(result.shape)
        else:
            result.view(-1, result.shape[-1]).index_add_(0, picked, update.to(result.dtype))
    return result


def _routed_weights(layer, name: str):
    """(A transposed, B transposed, scaling or None) of one adapter on one LoRA layer.

    A power-of-two scaling (alpha 16 / rank 8 = 2) is folded into B: exact in floating point,
    one operation fewer per layer and token.
    """
    a_t, b_t, scaling = layer.lora_A[name].weight.t(), layer.lora_B[name].weight.t(), layer.scaling[name]
    if scaling > 0 and math.frexp(scaling)[0] == 0.5:
        return a_t, b_t * scaling, None
    return a_t, b_t, scaling
