"""An evaluation run as types: its rows, its metrics per system, its freshness result; saved as metrics.json and
results.csv (the layout of those files is the CLI's contract) and read back from them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

SHORT_ANSWER_WORDS = 4  # a median answer this short is an answer, not a sentence: exact match means something

STAGES = ("embed", "retrieve", "prompt", "first_token", "generate", "total")
TEXT_COLUMNS = ("question", "gold", "source", "system", "prediction", "error")
# A spreadsheet runs a cell that starts like a formula ("=HYPERLINK(...)"): such text is written with a leading "'",
# which spreadsheets show as text, and read back without it.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _inert(text: str) -> str:
    return f"'{text}" if text.startswith(FORMULA_START) or text.startswith("'") and text[1:].startswith(FORMULA_START) \
        else text


def _revived(text: str) -> str:
    return text[1:] if text.startswith("'") and text[1:].startswith(FORMULA_START + ("'",)) else text


@dataclass(frozen=True)
class EvalRow:
    """One answer of one system to one question, scored."""

    question: str
    gold: str
    source: str
    system: str
    prediction: str
    exact_match: float
    f1: float
    contains: float
    semantic: float
    groundedness: float
    claims: int
    recall_at_k: float | None  # None where the system retrieves nothing (fine-tuned)
    tokens_out: int
    tokens_per_s: float
    abstained: float = 0.0  # 1: "The documents do not say."
    t_embed: float = 0.0
    t_retrieve: float = 0.0
    t_prompt: float = 0.0
    t_first_token: float = 0.0
    t_generate: float = 0.0
    t_total: float = 0.0
    error: str = ""  # the request raised instead of answering: the row is reported, not scored

    def seconds(self, stage: str) -> float:
        return getattr(self, f"t_{stage}")

    def to_csv(self) -> dict:
        row = dataclasses.asdict(self)
        return {name: (_inert(value) if name in TEXT_COLUMNS else value) for name, value in row.items()}

    @classmethod
    def from_csv(cls, row: dict) -> "EvalRow":
        kinds = {f.name: f.type for f in dataclasses.fields(cls)}
        values = {}
        for name, raw in row.items():
            if name not in kinds:
                continue
            if name in TEXT_COLUMNS:
                values[name] = _revived(raw)
            elif raw == "":
                values[name] = None
            else:
                values[name] = int(float(raw)) if kinds[name] == "int" else float(raw)
        return cls(**values)


@dataclass(frozen=True)
class Spread:
    p50: float
    p95: float


@dataclass(frozen=True)
class SystemMetrics:
    """Means over one system's rows, and p50/p95 of every stage's latency."""

    exact_match: float
    f1: float
    contains: float
    semantic: float
    groundedness: float
    tokens_per_s: float
    recall_at_k: float | None
    questions: int
    latency: dict[str, Spread]
    abstained: float = 0.0  # the share of questions answered "The documents do not say."
    failed: int = 0  # questions that raised instead of answering: left out of every mean above, and reported

    def get(self, metric: str) -> float | None:
        return getattr(self, metric, None)

    @classmethod
    def from_json(cls, data: dict) -> "SystemMetrics":
        return cls(**{**data, "latency": {stage: Spread(**s) for stage, s in data["latency"].items()}})


@dataclass(frozen=True)
class IndexInfo:
    documents: int
    chunks: int
    version: str


@dataclass(frozen=True)
class FreshCount:
    new: int  # answers holding the updated fact
    old: int  # answers still holding the earlier one


@dataclass(frozen=True)
class FreshnessResult:
    """The updated documents ingested into a copy of the index, the update questions asked of each system."""

    questions: int
    ingested: list[str]
    systems: dict[str, FreshCount]
    rows: list[dict]
    adapter: str

    @classmethod
    def from_json(cls, data: dict) -> "FreshnessResult":
        return cls(**{**data, "systems": {s: FreshCount(**c) for s, c in data["systems"].items()}})


@dataclass
class EvalRun:
    id: str
    created_at: str
    systems: list[str]
    model: str
    adapter: str
    adapter_created_at: str
    index: IndexInfo
    config: dict
    questions: int
    metrics: dict[str, SystemMetrics]
    rows: list[EvalRow] = field(default_factory=list)
    freshness: FreshnessResult | None = None
    latency_in_flight: int = 8  # questions answered at once while latencies were measured (1: each alone)
    folder: str = ""  # where it was saved (not part of metrics.json)

    @property
    def latency_note(self) -> str:
        """How to read the run's latencies: evaluation answers several questions at once (docs/latency.md)."""
        if self.latency_in_flight <= 1:
            return "latencies measured with each question alone"
        return (f"latencies measured under load, with {self.latency_in_flight} questions in flight: each answer "
                "shares the decoder with the others, so it takes longer than it would alone (Compare shows that)")

    def rows_of(self, system: str) -> list[EvalRow]:
        return [row for row in self.rows if row.system == system]

    def headline(self, metrics: tuple[str, ...]) -> tuple[str, ...]:
        """The metrics worth showing first: exact match only where answers are short (a right answer in a sentence
        never matches exactly), and the rest as given."""
        lengths = sorted(len(row.prediction.split()) for row in self.rows)
        short = bool(lengths) and lengths[len(lengths) // 2] <= SHORT_ANSWER_WORDS
        return tuple(m for m in metrics if m != "exact_match" or short)

    def to_json(self) -> dict:
        """metrics.json: everything but the rows and the folder."""
        data = dataclasses.asdict(self)
        del data["rows"], data["folder"]
        if data["freshness"] is None:
            del data["freshness"]
        return data

    @classmethod
    def from_json(cls, data: dict, rows: list[EvalRow], folder: str = "") -> "EvalRun":
        freshness = data.get("freshness")
        return cls(**{**data, "index": IndexInfo(**data["index"]),
                      "metrics": {s: SystemMetrics.from_json(m) for s, m in data["metrics"].items()},
                      "freshness": FreshnessResult.from_json(freshness) if freshness else None,
                      "rows": rows, "folder": folder})
