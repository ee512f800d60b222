"""Tests of preassign.core: no Dask, no storage."""
