"""Datasets in, batches out: types, registry and published files; readers, decode and cache; split and
normalize; batches in memory or streamed; features; and prepare, which picks one of these once per run."""
