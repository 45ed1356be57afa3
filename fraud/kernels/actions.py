"""Action codes shared by the kernels; equal to the fraud.v1.Action enum (larger = more severe)."""

ALLOW = 1
REVIEW = 2
BLOCK = 3
