"""What the routes do, one module per resource (jobs, batches, experiments, webhooks…),
plus the publisher and the completion waiter each API process runs."""
