"""Shared building blocks of compress-cache: data, models, objectives, checkpoints, the CLI."""
