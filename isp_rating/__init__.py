"""Generated API of the ISP usage-rating service."""
