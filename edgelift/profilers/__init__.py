"""Latency, memory and power profilers (see the profiler issue); reports in JSON/Markdown/HTML."""
