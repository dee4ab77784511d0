"""Database plumbing: engine, declarative base, column types and the unit of work."""
