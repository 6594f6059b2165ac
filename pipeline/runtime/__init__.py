"""Runtime: what every stage runs on - settings, errors, devices and processes, checkpoints and atomic writes,
run identity, logs and provenance."""
