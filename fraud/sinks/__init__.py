"""Alert delivery sinks: HMAC-signed webhooks (``signing``), retry and dead letters (``retry``).

Both modules are pure: no I/O, no clock reads (callers pass ``now``), no randomness of their own
(callers pass a ``random.Random``).
"""
