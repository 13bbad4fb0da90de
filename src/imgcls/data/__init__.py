"""Datasets: which ones exist (registry), how to read them (readers), the decoded cache,
the held-out validation split and normalization (prepare), and batches (batches)."""
