"""A workflow's rules and records: idempotency, cancel, lanes, dead letters, poison pills,
results, cost, the workflow table's store and the control topic."""
