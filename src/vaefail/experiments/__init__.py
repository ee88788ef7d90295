"""Experiments: declarative grids, a resumable results store, local/Ray execution, tables, claims, reports."""
