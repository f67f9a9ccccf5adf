"""Validation: Great Expectations suites and run reports."""
