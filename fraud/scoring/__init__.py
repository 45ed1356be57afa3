"""The columnar batch, the customer and terminal stages, features, policy."""
