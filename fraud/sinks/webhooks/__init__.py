"""Signed webhook delivery with retry topics and dead letters."""
