"""A slow, obviously correct pure-Python reference of the RADIUS usage rules."""
