"""Validation: Great Expectations suites and run reports."""

from .report import render_html, render_report
from .suites import (
    IMAGE_COLUMNS,
    IMAGE_FORMATS,
    MANIFEST_COLUMNS,
    OUTPUT_COLUMNS,
    SAFE_ID_PATTERN,
    ValidationOutcome,
    images_suite,
    manifest_row_problems,
    manifest_suite,
    output_suite,
    validate_images,
    validate_manifest,
    validate_output,
)

__all__ = [
    "ValidationOutcome",
    "validate_manifest",
    "validate_images",
    "validate_output",
    "manifest_row_problems",
    "manifest_suite",
    "images_suite",
    "output_suite",
    "render_report",
    "render_html",
    "SAFE_ID_PATTERN",
    "IMAGE_FORMATS",
    "IMAGE_COLUMNS",
    "OUTPUT_COLUMNS",
    "MANIFEST_COLUMNS",
]
