"""Hostile strings the report must show as text and never run."""

XSS = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"
