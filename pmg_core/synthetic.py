"""Placeholder until the embedded world lands."""
