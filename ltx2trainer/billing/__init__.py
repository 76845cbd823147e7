"""Per-step billing: the usage ledger, settlement when a job ends, budgets checked before one is queued
(`ledger`), and its tables (`models`). How prices, settlement and reports work: docs/billing.md."""
