"""Transformer layers shared by the patch embedding, the aggregator and the heads."""
