"""Offline training: the embedded scorer heads (``heads``) and the per-base-model critic."""
