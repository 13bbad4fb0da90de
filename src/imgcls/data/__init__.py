"""Datasets, in the order data flows (each module imports only those above it): the plain types (types),
the published files' format checks (formats), the named datasets (registry) and where their files are
(published); reading a split (readers) through the decoded cache (cache); the validation split (split) and
normalization (normalize); batches in memory (batches) or from files (stream); features files (features);
and prepare, which picks one of these once per run."""
