"""Local fallbacks: keyword index, answer cache, extractive answers. Knows nothing about HTTP."""
from fallback.bm25 import IndexCorrupt, IndexMissing, KeywordIndex, KeywordIndexError
from fallback.cache import AnswerCache, CacheEntry, CacheHit, CacheKey, normalise_query
from fallback.chunking import chunk_document, load_documents
from fallback.documents import Chunk
from fallback.evaluation import evaluate, load_golden, ndcg_at_k, mrr, precision_at_k, recall_at_k
from fallback.extractive import NO_INFO_ANSWER, ExtractiveAnswer, extractive_answer

__all__ = [
    "AnswerCache", "CacheEntry", "CacheHit", "CacheKey", "Chunk", "ExtractiveAnswer", "IndexCorrupt",
    "IndexMissing", "KeywordIndex", "KeywordIndexError", "NO_INFO_ANSWER", "chunk_document", "evaluate",
    "extractive_answer", "load_documents", "load_golden", "mrr", "ndcg_at_k", "normalise_query",
    "precision_at_k", "recall_at_k",
]
