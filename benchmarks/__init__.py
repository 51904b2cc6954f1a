"""Jitted benchmarks; each writes benchmarks/results/<name>.json (and a markdown table). Speed claims live here."""
