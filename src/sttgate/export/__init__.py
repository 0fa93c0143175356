"""Usage export (docs/export.md): the sinks (CloudEvents over HTTP, Stripe meter events) and the exporter tasks that
send the store's usage outbox to them."""
