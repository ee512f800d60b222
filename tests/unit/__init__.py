"""Unit tests: no services; seconds."""
