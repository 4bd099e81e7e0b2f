"""Benchmarks: each module prints a markdown table and writes bench/results/<name>.{md,json}."""
