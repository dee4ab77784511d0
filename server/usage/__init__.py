"""Usage recording: RADIUS accounting and metered usage, exactly once."""
