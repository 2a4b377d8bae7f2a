"""Evaluation harness: prompt sets, resumable runs, metrics."""
