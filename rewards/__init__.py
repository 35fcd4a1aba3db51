"""Reward services (pixel consistency, MLLM judge, synthetic judge), their gRPC server and client."""
