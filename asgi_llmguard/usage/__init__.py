"""Usage accounting: events, prices, budgets and the sinks that keep the ledger."""
