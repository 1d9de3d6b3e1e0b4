"""Evaluation, plots and explanations of a model folder's predictions."""
