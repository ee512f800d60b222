"""Tests of preassign.cluster: configuration (no AWS), Fargate arguments, the stack."""
