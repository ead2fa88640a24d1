"""Typer command modules: each parses its options, then calls typed library code."""
