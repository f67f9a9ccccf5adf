"""Prefect flows: orchestration only (wiring tasks together; no computation of their own)."""
