"""Open-loop load generation against the gateway: honest p99 and capacity at a latency SLO."""
