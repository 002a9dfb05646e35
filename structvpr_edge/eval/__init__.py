"""Evaluation: Recall@N, built-in reference descriptors, plots."""
