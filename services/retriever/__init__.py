"""The retriever service: semantic search over an index artifact (embeddings + Qdrant)."""
