"""Integration tests: real services, clusters, notebooks and browsers."""
