"""Scoring against the official ISIC metrics, statistics, reports and comparisons."""
