"""What people read and see for each system, verdict and metric: defined once for pages, reports and charts."""

from __future__ import annotations

SYSTEMS = ("rag", "ft", "rag_ft")
SYSTEM_TITLES = {"rag": "RAG", "ft": "Fine-tuned", "rag_ft": "RAG + fine-tuned"}
SYSTEM_SHORT = {"rag": "RAG", "ft": "Fine-tuned", "rag_ft": "RAG + FT"}  # table columns, legends
SYSTEM_DESCRIPTIONS = {"rag": "RAG (retrieval + base model)", "ft": "Fine-tuned (base model + LoRA, no retrieval)",
                       "rag_ft": "RAG + fine-tuned (retrieval + LoRA)"}
SYSTEM_COLOURS = {"rag": "#0f6e8c", "ft": "#c2571a", "rag_ft": "#6a4c93"}

VERDICT_COLOURS = {"supported": "#1b7f3b", "partly supported": "#b26b00", "unsupported": "#b3261e"}
# Streamlit's named colours for the same verdicts (its badges take names, not hex values).
VERDICT_BADGES = {"supported": "green", "partly supported": "orange", "unsupported": "red"}

QUALITY_METRICS = ("exact_match", "f1", "contains", "semantic", "groundedness", "recall_at_k")
METRICS = QUALITY_METRICS + ("abstained", "tokens_per_s")
# What each metric is called where people read it, and what it means in a sentence (docs/metrics.md says more).
METRIC_LABELS = {"exact_match": "Exact match", "f1": "Word overlap (F1)", "contains": "Gold answer contained",
                 "semantic": "Same meaning", "groundedness": "Backed by sources", "recall_at_k": "Right document found",
                 "abstained": "Abstained", "tokens_per_s": "Tokens/s", "p50 s": "Typical time (s)",
                 "p95 s": "Slow time, 1 in 20 (s)", "p50 first token s": "Typical first token (s)"}
METRIC_HELP = {
    "exact_match": "1 when the answer is exactly the gold answer (case, articles and punctuation aside). Answers "
                   "written as sentences score 0 even when right, so it is shown only for short answers.",
    "f1": "The share of words the answer and the gold answer have in common (0 to 1).",
    "contains": "The share of answers that contain the gold answer: the main score for answers in sentences.",
    "semantic": "How close the answer's meaning is to the gold answer's (embedding similarity, 0 to 1).",
    "groundedness": "The share of the answer's claims that a source supports and that answer the question.",
    "recall_at_k": "How often the document holding the answer is among the top k retrieved (RAG only).",
    "abstained": "The share of questions answered \"The documents do not say.\"",
    "tokens_per_s": "Generation speed: tokens written per second after the first one.",
    "p50 s": "Half the answers took less than this, from question to last word.",
    "p95 s": "19 answers in 20 took less than this.",
    "p50 first token s": "Half the answers showed their first word within this time.",
}


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def title(system: str) -> str:
    return SYSTEM_TITLES.get(system, system)


def counted(number: int, noun: str) -> str:
    """'1 question', '3 questions' (nouns with a plain -s plural)."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def latency_line(answer) -> str:
    """First token, total and speed as every page, report and the CLI show them (docs/latency.md); an answer that
    generated no token (an abstention) has no speed."""
    t = answer.timings
    speed = f"{answer.tokens_per_s:.1f} tokens/s" if answer.tokens_out else "no tokens generated"
    return f"first token {t.first_token:.2f} s · total {t.total:.2f} s · {speed}"
