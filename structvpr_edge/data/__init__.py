"""Datasets: the SynthCity generator and loaders for the standard VPR folder layout."""
