"""Per-customer and per-terminal window state, its bytes codec and stores."""
