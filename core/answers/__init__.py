"""Answers: retrieve passages, fit them into the model's context, stream a cited answer (RAG)."""
