"""`cocoedit simulate`: the real system on a local multi-node Ray cluster with simulated GPU compute (run.py)."""
