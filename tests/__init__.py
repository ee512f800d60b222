"""Tests of preassign."""
