"""Python tests of the compiled rating_core module."""
