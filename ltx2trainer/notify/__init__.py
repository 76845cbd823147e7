"""Reactions to job transitions: signed webhooks from an outbox. (Billing, the other reaction, is `ltx2trainer.billing`.)"""
