"""Ingestion: one parser set for files and HTTP, replay, the gateway."""
