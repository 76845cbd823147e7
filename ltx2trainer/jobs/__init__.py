"""Job store: tables, the lifecycle (the only place status changes), API keys, the queue."""
