"""Model providers shipped with the host."""
