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
