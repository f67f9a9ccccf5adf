"""Prediction heads: camera (iterative and MLP) and DPT dense heads."""
