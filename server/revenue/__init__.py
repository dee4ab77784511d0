"""Revenue at risk and dispute checks for Pedkai."""
