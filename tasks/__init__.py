"""Prefect tasks: one pipeline stage each, a thin call into model/, storage/ or validation/."""
