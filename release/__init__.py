"""Numbered versions of a served repository, swapped without downtime (make publish)."""
