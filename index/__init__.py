"""Store fingerprints, search them with FAISS and align the hits into matches."""
