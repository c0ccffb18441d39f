"""Test harness: a real Kubernetes control plane and helper tools for tests."""
