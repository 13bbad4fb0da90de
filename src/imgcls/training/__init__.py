"""The one loop and what drives it: the engine, a run's stages, the search, sweeps, resuming, devices and signals."""
