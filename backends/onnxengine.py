"""The onnxruntime engine (`DUET_ENGINE=onnxruntime`, `auto`'s choice for a Llama GGUF on a CPU): the file's 4-bit weights as they are.

torch decodes the bundled model from a float32 copy of its weights (538 MB read per token);
llama.cpp reads the GGUF's own 4-bit blocks but needs a compiler to install. This engine runs
the same blocks through onnxruntime, a wheel that chromadb already installs: the model
becomes one ONNX graph (`build_graph`, cached once per GGUF file by `prepare_graph`) whose
linear layers are onnxruntime's `MatMulNBits` over the very 4-bit values of the file. Q4_1
blocks (w = d*q + m) are `MatMulNBits`' symmetric form plus a correction, exactly:
w = d*(q - 8) + (m + 8d), and the second term is (m + 8d) times the sum of the input over
the block, a small float32 product. Q4_0 needs no correction, Q8_0 goes in as 8 bits, float
tensors as float32.

A run of the graph can serve several answers, as `fastdecode.LlamaPass` does: the rows' new
tokens lie end to end, every linear layer reads its weights once for all, and attention
keeps each token to its own row by a mask over the rows' keys and values (each row's KV
cache is its own numpy buffer, `OrtRowCache`, read without a copy when the row runs alone).
A LoRA adapter is a low-rank term on each projection, masked per token, so a fine-tuned
row's tokens get the adapter and RAG's do not; its matrices are inputs of the graph, bound
once per adapter version (`AdapterTensors`).

`accuracy` picks `MatMulNBits`' arithmetic: "int8" (the default: inputs rounded per block to
8 bits, as llama.cpp does; ~2x faster, answers may differ where two words nearly tie, and
each row runs apart, see `OrtPass`) or "float" (float32: greedy answers equal the
transformers engine's, tests/test_onnxengine.py checks, and rows share runs).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from backends.errors import ModelUnavailable
from backends.generation import Decoder, Request, Row, require_room
from backends.threads import TURNS

GRAPH_VERSION = 1  # bump when build_graph changes: cached graphs of an older version are rebuilt
GRAPH_FILE, WEIGHTS_FILE, CORRECTIONS_FILE, INFO_FILE = "model.onnx", "weights.data", "corrections.npz", "graph.json"
SUPPORTED_TYPES = {"Q4_0", "Q4_1", "Q8_0", "F16", "F32"}
ACCURACY_LEVELS = {"float": 0, "int8": 4}  # MatMulNBits' accuracy_level attribute
BLOCK = 32  # the quantization block of every supported GGUF type
# Layers whose projections share an input go through one MatMulNBits: their rows stacked.
GROUPS = {"qkv": ("attn_q", "attn_k", "attn_v"), "o": ("attn_output",), "gate_up": ("ffn_gate", "ffn_up"),
          "down": ("ffn_down",)}
PEFT_MODULES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}
MASKED = -1e30  # a score no token attends to


@dataclass(frozen=True)
class Shape:
    """What the graph needs to know of the model (from the GGUF's metadata)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    context: int
    rope_base: float
    norm_eps: float


# ---- reading the GGUF -------------------------------------------------------------------------
def unsupported_reason(gguf: str) -> str | None:
    """Why this engine cannot run the GGUF file (None: it can)."""
    stat = Path(gguf).stat()
    return _unsupported_reason(str(Path(gguf).resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _unsupported_reason(gguf: str, size: int, mtime_ns: int) -> str | None:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(gguf)
        read_shape(reader)
    except ModelUnavailable as error:
        return str(error)
    except Exception as error:  # not a GGUF file gguf can read
        return f"cannot read {gguf}: {error}"
    kinds = {t.tensor_type.name for t in reader.tensors if t.name.endswith(".weight") and len(t.shape) > 1}
    if not kinds <= SUPPORTED_TYPES:
        return (f"engine 'onnxruntime' reads {', '.join(sorted(SUPPORTED_TYPES))} weights, not "
                f"{', '.join(sorted(kinds - SUPPORTED_TYPES))}; use DUET_ENGINE=transformers")
    return None


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        raise ModelUnavailable(f"the GGUF file lacks {key!r}; use DUET_ENGINE=transformers")
    value = field.parts[field.data[0]]
    return value.tobytes().decode() if value.dtype == np.uint8 else value[0].item()


LAYER_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")


def read_shape(reader) -> Shape:
    """The model's shape, or ModelUnavailable where the graph would not compute what the model does."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ModelUnavailable(f"engine 'onnxruntime' runs Llama-family GGUF files, not {arch!r}; "
                               "use DUET_ENGINE=transformers")
    tensors = {t.name: t for t in reader.tensors}
    if reader.fields.get("llama.rope.scaling.type") is not None or "rope_freqs.weight" in tensors:
        raise ModelUnavailable("engine 'onnxruntime' does not apply rope scaling; use DUET_ENGINE=transformers")
    heads = _field(reader, "llama.attention.head_count")
    hidden = _field(reader, "llama.embedding_length")
    odd = [f"no blk.0.{name}.weight" for name in LAYER_TENSORS if f"blk.0.{name}.weight" not in tensors]
    odd += [f"a bias ({name})" for name in tensors if name.endswith(".bias")]
    if _optional(reader, "llama.attention.key_length", hidden // heads) != hidden // heads:
        odd.append("heads of another size")
    if odd:
        raise ModelUnavailable(f"engine 'onnxruntime' runs plain Llama layers, and this file has {odd[0]}; "
                               "use DUET_ENGINE=transformers")
    return Shape(layers=_field(reader, "llama.block_count"), hidden=hidden, heads=heads,
                 kv_heads=_optional(reader, "llama.attention.head_count_kv", heads), head_dim=hidden // heads,
                 vocab=int(tensors["token_embd.weight"].shape[1]), context=_field(reader, "llama.context_length"),
                 rope_base=float(_optional(reader, "llama.rope.freq_base", 10000.0)),
                 norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")))


def _optional(reader, key: str, default):
    return _field(reader, key) if key in reader.fields else default


@dataclass
class Blocks:
    """A weight matrix (rows x inputs) as MatMulNBits takes it, plus the correction its GGUF type needs."""

    packed: np.ndarray | None  # (rows, blocks, bytes per block) uint8; None: a float matrix
    scales: np.ndarray | None  # (rows, blocks) float32
    bits: int
    correction: np.ndarray | None  # (rows, blocks) float32: added times each block's input sum (Q4_1's minimum)
    dense: np.ndarray | None = None  # (rows, inputs) float32, for float GGUF tensors

    def take_rows(self, order: np.ndarray) -> "Blocks":
        pick = lambda a: None if a is None else a[order]  # noqa: E731
        return Blocks(pick(self.packed), pick(self.scales), self.bits, pick(self.correction), pick(self.dense))

    @property
    def rows(self) -> int:
        return len(self.dense) if self.dense is not None else len(self.packed)


def _half(raw: np.ndarray) -> np.ndarray:
    return raw.copy().view(np.float16)[..., 0].astype(np.float32)


def _nibbles(values: np.ndarray) -> np.ndarray:
    """GGUF 4-bit blocks (16 bytes: element j low nibble, j+16 high) as MatMulNBits' (element 2i low, 2i+1 high)."""
    elements = np.concatenate([values & 0xF, values >> 4], axis=-1)
    return (elements[..., 0::2] | (elements[..., 1::2] << 4)).astype(np.uint8)


def read_blocks(tensor) -> Blocks:
    """One GGUF tensor in MatMulNBits' form (exact: the same values, only laid out anew)."""
    kind = tensor.tensor_type.name
    data = np.asarray(tensor.data)
    rows = data.shape[0]
    if kind == "Q4_1":
        blocks = data.reshape(rows, -1, 20)
        d, m = _half(blocks[..., 0:2]), _half(blocks[..., 2:4])
        return Blocks(_nibbles(blocks[..., 4:]), d, 4, m + 8 * d)  # d*q + m = d*(q - 8) + (m + 8d)
    if kind == "Q4_0":
        blocks = data.reshape(rows, -1, 18)
        return Blocks(_nibbles(blocks[..., 2:]), _half(blocks[..., 0:2]), 4, None)  # d*(q - 8): MatMulNBits' own form
    if kind == "Q8_0":
        blocks = data.reshape(rows, -1, 34)
        signed = blocks[..., 2:].view(np.int8)
        return Blocks((signed.astype(np.int16) + 128).astype(np.uint8), _half(blocks[..., 0:2]), 8, None)
    if kind in ("F32", "F16"):
        return Blocks(None, None, 0, None, dense=data.astype(np.float32).reshape(rows, -1))
    raise ModelUnavailable(f"engine 'onnxruntime' reads Q4_0, Q4_1, Q8_0, F16 and F32 weights, not {kind} "
                           f"({tensor.name}); use DUET_ENGINE=transformers or llama.cpp")


def hf_row_order(rows: int, heads: int) -> np.ndarray:
    """Where each of transformers' query/key rows lies in the GGUF (llama.cpp interleaves rotary halves per head)."""
    gguf_to_hf = np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(rows)
    order = np.empty(rows, dtype=np.int64)
    order[gguf_to_hf] = np.arange(rows)
    return order


def dense_of(blocks: Blocks) -> np.ndarray:
    """The matrix's float32 values (rows x inputs), for the embedding table."""
    if blocks.dense is not None:
        return blocks.dense
    if blocks.bits == 8:
        q = blocks.packed.astype(np.float32) - 128
    else:
        q = np.empty(blocks.packed.shape[:-1] + (BLOCK,), np.float32)
        q[..., 0::2], q[..., 1::2] = blocks.packed & 0xF, blocks.packed >> 4
        q -= 8
    values = q * blocks.scales[..., None]
    if blocks.correction is not None:
        values += blocks.correction[..., None]
    return values.reshape(len(values), -1)


# ---- the graph ----------------------------------------------------------------------------------
class GraphBuilder:
    """Nodes, initializers and the names between them (onnx.helper, with fresh names)."""

    def __init__(self, accuracy_level: int):
        self.accuracy_level = accuracy_level
        self.nodes, self.initializers, self.inputs, self.outputs = [], [], [], []
        self.count = 0
        self.corrections: dict[str, np.ndarray] = {}  # "layer.group" -> (input blocks x rows)

    def op(self, op_type: str, *inputs: str, domain: str = "", outputs: int = 1, **attributes):
        from onnx import helper

        self.count += 1
        names = [f"{op_type.lower()}_{self.count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, domain=domain, **attributes))
        return names[0] if outputs == 1 else names

    def const(self, value, name: str | None = None) -> str:
        from onnx import numpy_helper

        self.count += 1
        name = name or f"const_{self.count}"
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def ints(self, *values: int) -> str:
        return self.const(np.array(values, dtype=np.int64))

    def input(self, name: str, elem_type: int, shape: list) -> str:
        from onnx import helper

        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, source: str, name: str, shape: list) -> None:
        from onnx import TensorProto, helper

        self.nodes.append(helper.make_node("Identity", [source], [name]))
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))

    def linear(self, x: str, blocks: list[Blocks], inputs: int) -> str:
        """x @ W.T for the rows of several matrices stacked (one product per run of the same kind)."""
        outputs, start = [], 0
        while start < len(blocks):
            end = start + 1
            while end < len(blocks) and _same_kind(blocks[start], blocks[end]):
                end += 1
            outputs.append(self._product(x, blocks[start:end], inputs))
            start = end
        return outputs[0] if len(outputs) == 1 else self.op("Concat", *outputs, axis=-1)

    def _product(self, x: str, blocks: list[Blocks], inputs: int) -> str:
        if blocks[0].dense is not None:
            return self.op("MatMul", x, self.const(np.concatenate([b.dense for b in blocks]).T))
        packed = np.concatenate([b.packed for b in blocks])
        scales = np.concatenate([b.scales for b in blocks])
        return self.op("MatMulNBits", x, self.const(packed), self.const(scales.reshape(-1)), domain="com.microsoft",
                       K=inputs, N=len(packed), bits=blocks[0].bits, block_size=BLOCK,
                       accuracy_level=self.accuracy_level)


def _same_kind(a: Blocks, b: Blocks) -> bool:
    return (a.dense is None) == (b.dense is None) and a.bits == b.bits


def _correction_of(blocks: list[Blocks], inputs: int) -> np.ndarray:
    """(input blocks x rows): what each block's input sum adds to each output (zeros where a type needs none)."""
    parts = [b.correction if b.correction is not None else np.zeros((b.rows, inputs // BLOCK), np.float32)
             for b in blocks]
    return np.concatenate(parts).T.astype(np.float32)


def build_graph(gguf_path: str, accuracy: str = "int8"):
    """The model as an ONNX graph, its shape, and the Q4_1 corrections per projection group.

    Inputs: ids, positions (1 x T), mask (group*T x held+T: 0 where a token may look,
    MASKED elsewhere; repeated for each query head sharing a kv head), last (R: the tokens
    whose logits are wanted), per layer `past_keys.L` and `past_values.L` (kv heads x held x
    head dim: the rows' caches one after the other), per
    group `mix.G` (T x blocks+r: 1 for the block sums, 1 or 0 per token for the adapter's
    columns), and per layer and group `lora_a.L.G` (inputs x blocks+r: block sums, then A) and
    `lora_c.L.G` (blocks+r x rows: the correction, then B). Outputs: logits (R x vocab) and per
    layer `new_keys.L`, `new_values.L` (kv heads x T x head dim).
    """
    from gguf import GGUFReader
    from onnx import TensorProto, helper

    reader = GGUFReader(gguf_path)
    shape = read_shape(reader)
    tensors = {t.name: t for t in reader.tensors}
    b = GraphBuilder(ACCURACY_LEVELS[accuracy])
    ids = b.input("ids", TensorProto.INT64, ["T"])
    positions = b.input("positions", TensorProto.INT64, [1, "T"])
    mask = b.input("mask", TensorProto.FLOAT, ["GT", "S"])
    last = b.input("last", TensorProto.INT64, ["R"])
    mix = {group: b.input(f"mix.{group}", TensorProto.FLOAT, ["T", f"c_{group}"]) for group in GROUPS}
    embedding = read_blocks(tensors["token_embd.weight"])
    hidden = b.op("Gather", b.const(dense_of(embedding), "embedding"), ids, axis=0)  # T x hidden
    cos, sin = (b.const(table) for table in _rope_tables(shape))
    for layer in range(shape.layers):
        hidden = _decoder_layer(b, shape, tensors, layer, hidden, (positions, cos, sin), mask, mix)
    normed = _rms_norm(b, b.op("Gather", hidden, last, axis=0), tensors["output_norm.weight"], shape.norm_eps)
    head = read_blocks(tensors["output.weight"]) if "output.weight" in tensors else embedding
    if accuracy == "float" and head.bits == 8:  # MatMulNBits' float path for 8 bits is slow: float32 values
        head = Blocks(None, None, 0, None, dense=dense_of(head))
    b.output(b.linear(normed, [head], shape.hidden), "logits", ["R", shape.vocab])
    graph = helper.make_graph(b.nodes, "duet-llama", b.inputs, b.outputs, b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model, shape, b.corrections


def _rope_tables(shape: Shape) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin per position and frequency (context x head dim / 2)."""
    inverse = 1.0 / (shape.rope_base ** (np.arange(0, shape.head_dim, 2, dtype=np.float64) / shape.head_dim))
    angles = np.outer(np.arange(shape.context, dtype=np.float64), inverse)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _rms_norm(b: GraphBuilder, x: str, weight, eps: float) -> str:
    return b.op("SimplifiedLayerNormalization", x, b.const(np.asarray(weight.data, np.float32)), axis=-1, epsilon=eps)


def _projection(b: GraphBuilder, x: str, blocks: list[Blocks], inputs: int, layer: int, group: str, mix: dict) -> str:
    """The group's stacked projections plus [block sums of x, x @ A] * mix @ C (the correction, the adapter's B)."""
    from onnx import TensorProto

    key = f"{layer}.{group}"
    b.corrections[key] = _correction_of(blocks, inputs)
    rows = sum(block.rows for block in blocks)
    lora_a = b.input(f"lora_a.{key}", TensorProto.FLOAT, [inputs, f"c_{group}"])
    lora_c = b.input(f"lora_c.{key}", TensorProto.FLOAT, [f"c_{group}", rows])
    extra = b.op("MatMul", b.op("Mul", b.op("MatMul", x, lora_a), mix[group]), lora_c)
    return b.op("Add", b.linear(x, blocks, inputs), extra)


def _decoder_layer(b: GraphBuilder, shape: Shape, tensors: dict, layer: int, hidden: str, rope, mask: str,
                   mix: dict) -> str:
    from onnx import TensorProto

    name = lambda part: f"blk.{layer}.{part}.weight"  # noqa: E731
    kv = shape.kv_heads * shape.head_dim
    normed = _rms_norm(b, hidden, tensors[name("attn_norm")], shape.norm_eps)
    q, k, v = (read_blocks(tensors[name(part)]) for part in GROUPS["qkv"])
    q, k = q.take_rows(hf_row_order(q.rows, shape.heads)), k.take_rows(hf_row_order(k.rows, shape.kv_heads))
    q = _scaled(q, shape.head_dim ** -0.5)  # attention's scale, in the query rows (exact for head dim 64: 1/8)
    qkv = _projection(b, normed, [q, k, v], shape.hidden, layer, "qkv", mix)
    query_key, value = b.op("Split", qkv, b.ints(shape.hidden + kv, kv), axis=-1, outputs=2)
    positions, cos, sin = rope
    rotated = b.op("RotaryEmbedding", b.op("Unsqueeze", query_key, b.ints(0)), positions, cos, sin,
                   domain="com.microsoft", interleaved=0, num_heads=shape.heads + shape.kv_heads)
    query, key = b.op("Split", rotated, b.ints(shape.hidden, kv), axis=-1, outputs=2)
    key, value = (_heads_first(b, x, shape.kv_heads, shape) for x in (key, value))  # kv heads x T x head dim
    b.output(key, f"new_keys.{layer}", [shape.kv_heads, "T", shape.head_dim])
    b.output(value, f"new_values.{layer}", [shape.kv_heads, "T", shape.head_dim])
    past_keys, past_values = (b.input(f"past_{kind}.{layer}", TensorProto.FLOAT, [shape.kv_heads, "P", shape.head_dim])
                              for kind in ("keys", "values"))
    attended = _attention(b, shape, query, (past_keys, key), (past_values, value), mask)
    hidden = b.op("Add", hidden, _projection(b, attended, [read_blocks(tensors[name("attn_output")])], shape.hidden,
                                             layer, "o", mix))
    normed = _rms_norm(b, hidden, tensors[name("ffn_norm")], shape.norm_eps)
    gate_up = [read_blocks(tensors[name(part)]) for part in GROUPS["gate_up"]]
    gate, up = b.op("Split", _projection(b, normed, gate_up, shape.hidden, layer, "gate_up", mix), axis=-1, outputs=2)
    activated = b.op("Mul", b.op("Mul", gate, b.op("Sigmoid", gate)), up)
    return b.op("Add", hidden, _projection(b, activated, [read_blocks(tensors[name("ffn_down")])], gate_up[0].rows,
                                           layer, "down", mix))


def _scaled(blocks: Blocks, factor: float) -> Blocks:
    def scale(a):
        return None if a is None else (a * np.float32(factor)).astype(np.float32)

    return Blocks(blocks.packed, scale(blocks.scales), blocks.bits, scale(blocks.correction), scale(blocks.dense))


def _heads_first(b: GraphBuilder, x: str, heads: int, shape: Shape) -> str:
    """1 x T x heads*head dim (or T x ...) as heads x T x head dim."""
    return b.op("Transpose", b.op("Reshape", x, b.ints(-1, heads, shape.head_dim)), perm=[1, 0, 2])


def _attention(b: GraphBuilder, shape: Shape, query: str, keys: tuple, values: tuple, mask: str) -> str:
    """Each query head over its kv head's held and new positions that the mask lets it see; T x hidden.

    A kv head's query heads lie one after the other (kv heads x group*T x head dim), so the
    mask (group*T x held+T) is the token mask repeated per query head of the group.

    Held and new keys are not joined (a copy of every held key per layer): the scores of
    both are, and the weights are split again over the held and the new values.
    """
    query = b.op("Reshape", _heads_first(b, query, shape.heads, shape), b.ints(shape.kv_heads, -1, shape.head_dim))
    scores = b.op("Concat", *[b.op("FusedMatMul", query, k, domain="com.microsoft", transB=1) for k in keys], axis=-1)
    weights = b.op("Softmax", b.op("Add", scores, mask), axis=-1)
    sizes = b.op("Concat", *[b.op("Shape", k, start=1, end=2) for k in keys], axis=0)  # held, new
    held_weights, new_weights = b.op("Split", weights, sizes, axis=-1, outputs=2)
    attended = b.op("Add", b.op("MatMul", held_weights, values[0]), b.op("MatMul", new_weights, values[1]))
    attended = b.op("Reshape", attended, b.ints(shape.heads, -1, shape.head_dim))  # heads x T x d
    return b.op("Reshape", b.op("Transpose", attended, perm=[1, 0, 2]), b.ints(-1, shape.hidden))


# ---- running it -------------------------------------------------------------------------------
class OrtRowCache:
    """One answer's keys and values (layers x kv heads x capacity x head dim), allocated once, zeros beyond `length`.

    A pass reads a layer's whole buffer when the row runs alone (no copy; the mask hides the
    positions not written yet, and zeros keep them harmless).
    """

    def __init__(self, shape: Shape, capacity: int):
        size = (shape.layers, shape.kv_heads, capacity, shape.head_dim)
        self.keys, self.values = np.zeros(size, np.float32), np.zeros(size, np.float32)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def start_from(self, prefix: "OrtRowCache") -> "OrtRowCache":
        n = prefix.length
        self.keys[:, :, :n], self.values[:, :, :n] = prefix.keys[:, :, :n], prefix.values[:, :, :n]
        self.length = n
        return self


class AdapterTensors:
    """One adapter version's graph inputs (`lora_a.*`, `lora_c.*`), as onnxruntime values made once.

    A group's `lora_a` is [block sums | A of each projection] (inputs x blocks+r) and its
    `lora_c` is [the Q4_1 correction ; each projection's B, scaled as peft scales it, over its
    own output rows]. The bare base model has a rank-1 zero adapter.
    """

    def __init__(self, corrections: dict[str, np.ndarray], shape: Shape, folder: str | None):
        import onnxruntime as ort

        lora = _peft_lora(Path(folder)) if folder else {}
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


def _peft_lora(folder: Path) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray, float]]:
    """(layer, GGUF projection name) -> (A, B, scale) of a peft adapter folder."""
    from safetensors.numpy import load_file

    from backends.gguf_adapter import GGUF_NAMES, PEFT_KEY
    from backends.training import ADAPTER_CONFIG, ADAPTER_WEIGHTS

    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    if config.get("use_dora"):
        raise ModelUnavailable("engine 'onnxruntime' applies LoRA adapters, not DoRA; use DUET_ENGINE=transformers")
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


class OrtPass:
    """Feeds several rows their tokens in one run of the graph; each row keeps its own KV cache (numpy)."""

    def __init__(self, session, shape: Shape, accuracy: str):
        self.session, self.shape = session, shape
        # With int8 inputs, the rows beside a row change its results: MatMulNBits computes one token
        # differently from several, and attention's sums shift in their last bits; a rounding step then
        # flips and, later, a near-tie between two words (the same question asked alone and in Compare:
        # 5 of 12 fine-tuned answers differed). So int8 rows run apart, a run each per round, exactly as
        # alone; float rows share runs (12 of 12 equal).
        self.shares_rows = accuracy == "float"
        self.outputs = [o.name for o in session.get_outputs()]

    def cache(self, capacity: int, prefix: OrtRowCache | None = None) -> OrtRowCache:
        cache = OrtRowCache(self.shape, capacity)
        return cache.start_from(prefix) if prefix is not None else cache

    def __call__(self, feeds: list, adapter: AdapterTensors, adapted: set) -> np.ndarray:
        """The logits after each row's last fed token (rows x vocabulary); rows whose adapter is in `adapted` get it."""
        import onnxruntime as ort

        held = [feed.cache.length for feed in feeds]
        counts = [len(feed.tokens) for feed in feeds]
        flags = [float(feed.adapter in adapted) for feed, n in zip(feeds, counts) for _ in range(n)]
        inputs = {"ids": np.array([t for feed in feeds for t in feed.tokens], np.int64),
                  "positions": np.array([[h + i for h, n in zip(held, counts) for i in range(n)]], np.int64),
                  "mask": self._mask(feeds, counts),
                  "last": np.cumsum(counts) - 1,
                  **adapter.mix(np.array(flags, np.float32))}
        for layer in range(self.shape.layers):
            inputs[f"past_keys.{layer}"] = _joined([feed.cache.keys[layer] for feed in feeds])
            inputs[f"past_values.{layer}"] = _joined([feed.cache.values[layer] for feed in feeds])
        values = {name: ort.OrtValue.ortvalue_from_numpy(value) for name, value in inputs.items()}
        results = dict(zip(self.outputs, self.session.run_with_ort_values(self.outputs, {**values, **adapter.values})))
        new = {name: value.numpy() for name, value in results.items()}
        start = 0
        for feed, h, n in zip(feeds, held, counts):  # only now: a failed run leaves every cache as it was
            for layer in range(self.shape.layers):
                feed.cache.keys[layer][:, h:h + n] = new[f"new_keys.{layer}"][:, start:start + n]
                feed.cache.values[layer][:, h:h + n] = new[f"new_values.{layer}"][:, start:start + n]
            feed.cache.length = h + n
            start += n
        return new["logits"]

    def _mask(self, feeds: list, counts: list[int]) -> np.ndarray:
        """group*T x (capacities + T): a token sees its row's held positions and its row's new tokens up to itself."""
        capacities = [feed.cache.capacity for feed in feeds]
        held_total, total = sum(capacities), sum(counts)
        mask = np.full((total, held_total + total), MASKED, np.float32)
        c = t = 0
        for feed, capacity, n in zip(feeds, capacities, counts):
            mask[t:t + n, c:c + feed.cache.length] = 0
            mask[t:t + n, held_total + t:held_total + t + n] = np.triu(np.full((n, n), MASKED, np.float32), 1)
            c, t = c + capacity, t + n
        return np.tile(mask, (self.shape.heads // self.shape.kv_heads, 1))


def _joined(buffers: list[np.ndarray]) -> np.ndarray:
    """The rows' whole buffers of one layer one after the other (kv heads x capacities x head dim); one row: itself."""
    return buffers[0] if len(buffers) == 1 else np.concatenate(buffers, axis=1)


# ---- the cached graph and the decoder -----------------------------------------------------------
def graph_folder(gguf: Path, settings) -> tuple[Path, str]:
    """Where the GGUF's graph is cached (per file version, accuracy and GRAPH_VERSION), and the file's hash."""
    from backends.models import file_sha256

    sha = file_sha256(gguf)
    return settings.model_cache_dir / f"{gguf.stem}-{sha[:12]}-onnx-{settings.onnx_accuracy}-v{GRAPH_VERSION}", sha


def can_run(gguf: Path, settings) -> bool:
    """Whether this engine runs the GGUF file: its graph is cached already, or the file's metadata says so.

    Reading the metadata parses the whole file's header (its vocabulary: ~1.5 s for the bundled
    model), so a cached graph answers first.
    """
    from backends.models import cache_is_valid

    return cache_is_valid(*graph_folder(gguf, settings)) or unsupported_reason(str(gguf)) is None


def prepare_graph(gguf: Path, settings, progress=lambda _: None) -> Path:
    """The GGUF's graph folder in the model cache, built once."""
    from backends.models import cache_is_valid, write_cache_folder

    target, sha = graph_folder(gguf, settings)
    if not cache_is_valid(target, sha):
        reason = unsupported_reason(str(gguf))
        if reason:
            raise ModelUnavailable(reason)
        progress(f"Preparing {gguf.name} for onnxruntime (once, about 10 s)…")
        write_cache_folder(target, gguf, sha, lambda work: _write_graph(gguf, settings.onnx_accuracy, work))
        progress("Model prepared for onnxruntime and cached.")
    return target


def _write_graph(gguf: Path, accuracy: str, folder: Path) -> None:
    import onnx

    model, shape, corrections = build_graph(str(gguf), accuracy)
    onnx.save_model(model, str(folder / GRAPH_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=WEIGHTS_FILE, size_threshold=1024)
    np.savez(folder / CORRECTIONS_FILE, **corrections)
    (folder / INFO_FILE).write_text(json.dumps({"shape": dataclasses.asdict(shape), "accuracy": accuracy}))


class OrtDecoder(Decoder):
    """The decoder of a model run by onnxruntime: each round, a run of the graph per row (int8) or per adapter (float)."""

    def __init__(self, llm):
        super().__init__(llm)
        import onnxruntime as ort
        import torch

        folder = Path(llm.graph)
        info = json.loads((folder / INFO_FILE).read_text())
        self.shape = Shape(**info["shape"])
        with np.load(folder / CORRECTIONS_FILE) as saved:
            self.corrections = {key: saved[key] for key in saved.files}
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the thread count torch decodes with
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # no warnings about initializers the optimizer folded
        session = ort.InferenceSession(str(folder / GRAPH_FILE), options, providers=["CPUExecutionProvider"])
        self.passes = OrtPass(session, self.shape, info["accuracy"])
        self.adapters: dict = {}  # AdapterVersion -> AdapterTensors

    def _passes(self) -> OrtPass:
        return self.passes

    def _open(self, request: Request) -> Row:
        require_room(request, self.shape.context, "the model's")
        return super()._open(request)

    def _forward(self, rows: list[Row]) -> list:
        """Logits per row (or the exception of a row that failed alone: an adapter this engine cannot apply, say)."""
        from backends.fastdecode import Feed

        feeds = [Feed(row.cache, row.feed, row.request.adapter) for row in rows]
        tensors: dict = {}
        logits: list = [None] * len(rows)
        for index, feed in enumerate(feeds):
            try:
                tensors[feed.adapter] = self._tensors(feed.adapter)
            except Exception as error:  # this row fails alone
                logits[index] = error
        for name, members in self._runs([(i, f) for i, f in enumerate(feeds) if logits[i] is None]):
            with TURNS.decoding_pass():  # after any embedding that is waiting (backends/threads.py)
                out = self.passes([feeds[i] for i in members], tensors[name], {name} if name else set())
            for index, row_logits in zip(members, out):
                logits[index] = row_logits
        return logits

    def _runs(self, feeds: list[tuple]) -> list[tuple]:
        """(adapter, indices of its rows) per run of the graph: a run per row, or (float) per adapter, the base rows
        with the first."""
        if not self.passes.shares_rows:
            return [(feed.adapter, [index]) for index, feed in feeds]
        by_adapter: dict = {}
        for index, feed in feeds:
            by_adapter.setdefault(feed.adapter, []).append(index)
        adapters = [name for name in by_adapter if name is not None] or [None]
        return [(name, by_adapter.get(name, []) + (by_adapter.get(None, []) if turn == 0 and name is not None else []))
                for turn, name in enumerate(adapters)]

    def _tensors(self, adapter: str | None) -> AdapterTensors:
        """The adapter's graph inputs as the model holds it (made once per version)."""
        from backends.finetuned import AdapterHost

        version = AdapterHost.of(self.llm).version(adapter)
        if version not in self.adapters:
            for old in [v for v in self.adapters if v.name == version.name]:  # a replaced adapter's old weights
                del self.adapters[old]
            self.adapters[version] = AdapterTensors(self.corrections, self.shape, version.folder or None)
        return self.adapters[version]
