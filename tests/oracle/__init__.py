"""The per-user reference implementation (an oracle written the slow way) and its tests."""
