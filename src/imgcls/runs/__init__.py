"""What runs leave on disk and read back: run and sweep folders, checkpoints, export, eval and predict."""
