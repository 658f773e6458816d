"""Downstream tasks: what a model learns to output, its losses and metrics."""
