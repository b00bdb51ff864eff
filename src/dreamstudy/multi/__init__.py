"""Multi-concept personalization: merging single-concept weights into one model (issue 11)."""
