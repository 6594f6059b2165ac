"""One module per pipeline stage: prepare -> extract -> train -> evaluate (-> export)."""
