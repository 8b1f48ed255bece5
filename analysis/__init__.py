"""Analysis of finished studies: DataFrames and plots (no torch, no Ray)."""
