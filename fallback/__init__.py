"""Local fallbacks: keyword index, answer cache, extractive answers. Knows nothing about HTTP."""
from fallback.documents import Chunk

__all__ = ["Chunk"]
