"""The Ray runtime shared by every application: starting or joining a cluster, placement groups, reward-service deployments, provenance."""
