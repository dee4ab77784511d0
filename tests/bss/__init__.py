"""The BSS adapter conformance suite (package tests.bss; never shadows the top-level bss)."""
