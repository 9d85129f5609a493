"""Video quality and motion metrics that run on decoded frames (no model downloads)."""
