"""Email and SMS notifications for alerts or any event topic."""
