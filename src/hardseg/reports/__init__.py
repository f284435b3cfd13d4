"""Comparisons, tables, plots and cross-domain matrices built from MLflow."""
