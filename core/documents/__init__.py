"""Turning uploaded files into text sections (parsing) and token-sized chunks (chunking)."""
