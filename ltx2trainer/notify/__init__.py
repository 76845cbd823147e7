"""Reactions to job transitions: signed webhooks from an outbox (and, later, billing)."""
