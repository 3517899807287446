"""The webhook sender process: POSTs run events to webhooks (Standard Webhooks signatures),
retrying with backoff for up to WEBHOOK_RETRY_FOR, from the WEBHOOK_JOBS work queue."""
