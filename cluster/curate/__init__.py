"""Data curation: turn editing datasets into a masked training set (inputs, pipeline stages, report)."""
