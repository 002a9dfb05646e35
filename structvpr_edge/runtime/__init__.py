"""Torch-free runtime: what an edge device imports to run an exported model."""
