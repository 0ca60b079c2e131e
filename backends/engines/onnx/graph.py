"""The onnxruntime engine's graph: a Llama GGUF file's 4-bit weights as one ONNX graph, built once and cached.

The model becomes one ONNX graph (`build_graph`, cached once per GGUF file by
`prepare_graph`) whose linear layers are onnxruntime's `MatMulNBits` over the very 4-bit
values of the file. Q4_1 blocks (w = d*q + m) are `MatMulNBits`' symmetric form plus a
correction, exactly: w = d*(q - 8) + (m + 8d), and the second term is (m + 8d) times the sum
of the input over the block, a small float32 product. Q4_0 needs no correction, Q8_0 goes
in as 8 bits, float tensors as float32. How a run serves several rows, and the adapters'
inputs: `runtime.py`, `adapters.py`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from backends.core.errors import ModelUnavailable
from backends.models.files import cache_is_valid, file_sha256, write_cache_folder
from backends.models.lora import gguf_row_order

GRAPH_VERSION = 1  # bump when build_graph changes: cached graphs of an older version are rebuilt
GRAPH_FILE, WEIGHTS_FILE, CORRECTIONS_FILE, INFO_FILE = "model.onnx", "weights.data", "corrections.npz", "graph.json"
SUPPORTED_TYPES = {"Q4_0", "Q4_1", "Q8_0", "F16", "F32"}
ACCURACY_LEVELS = {"float": 0, "int8": 4}  # MatMulNBits' accuracy_level attribute
BLOCK = 32  # the quantization block of every supported GGUF type
# Layers whose projections share an input go through one MatMulNBits: their rows stacked.
GROUPS = {"qkv": ("attn_q", "attn_k", "attn_v"), "o": ("attn_output",), "gate_up": ("ffn_gate", "ffn_up"),
          "down": ("ffn_down",)}
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


def hf_rows(rows: int, heads: int) -> np.ndarray:
    """Where each of transformers' query/key rows lies in the GGUF."""
    return np.argsort(gguf_row_order(rows, heads))


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
    q, k = q.take_rows(hf_rows(q.rows, shape.heads)), k.take_rows(hf_rows(k.rows, shape.kv_heads))
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


# ---- the cached graph -----------------------------------------------------------
def graph_folder(gguf: Path, settings) -> tuple[Path, str]:
    """Where the GGUF's graph is cached (per file version, accuracy and GRAPH_VERSION), and the file's hash."""
    sha = file_sha256(gguf)
    return settings.model_cache_dir / f"{gguf.stem}-{sha[:12]}-onnx-{settings.onnx_accuracy}-v{GRAPH_VERSION}", sha


def can_run(gguf: Path, settings) -> bool:
    """Whether this engine runs the GGUF file: its graph is cached already, or the file's metadata says so.

    Reading the metadata parses the whole file's header (its vocabulary: ~1.5 s for the bundled
    model), so a cached graph answers first.
    """
    return cache_is_valid(*graph_folder(gguf, settings)) or unsupported_reason(str(gguf)) is None


def prepare_graph(gguf: Path, settings, progress=lambda _: None) -> Path:
    """The GGUF's graph folder in the model cache, built once."""
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
