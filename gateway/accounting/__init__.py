"""Who may call, how much, and what it cost: keys, limits, budgets, prices and the usage ledger."""
