"""Exams, metrics, runs, votes and the advisor: measuring base, RAG, fine-tuned and both."""
