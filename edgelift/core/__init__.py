"""Dependency-free foundations shared by converters, runtimes and profilers (numpy only)."""
