"""Evaluation of reconstructions against ground truth: metrics and the evaluate command."""
