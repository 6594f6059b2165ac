"""The library of compress-cache, grouped by concern: `data`, `models`, `methods`, `evaluation`, `runtime`.

It imports nothing from `stages/` (the stage functions and the CLI on top of them); `cache/` imports nothing
from here (tests/test_layering.py checks both).
"""
