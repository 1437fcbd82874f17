"""The four variants every comparison, vote and evaluation run speaks of, and their names for people."""

VARIANTS: tuple[str, ...] = ("base", "rag", "ft", "rag+ft")
LABELS = {
    "base": "Base model",
    "rag": "Base + RAG",
    "ft": "Fine-tuned",
    "rag+ft": "Fine-tuned + RAG",
}
USES_RAG = {"base": False, "rag": True, "ft": False, "rag+ft": True}
USES_ADAPTER = {"base": False, "rag": False, "ft": True, "rag+ft": True}
