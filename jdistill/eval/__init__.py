"""Evaluation: metrics accumulated as sums, reports and plots."""

from jdistill.eval.metrics import add_stats, prediction_stats, summarize

__all__ = ["add_stats", "prediction_stats", "summarize"]
