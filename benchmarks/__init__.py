"""Benchmarks of preassign against its peers (see benchmarks/README.md)."""
