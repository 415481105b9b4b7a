"""Load generation and the side-by-side benchmark: honest p99 and capacity at a latency SLO.

openloop (the generator: schedules, statistics), targets (gateway/naive over HTTP, Triton over
gRPC), corpus (the photos sent), sweep (capacity search), report + plots (what people read),
__main__ (make loadtest); bench_e2e (make bench-e2e) with processes (servers it starts),
model_alone (the limit), naive_server (the baseline) and bench_report (its record).
"""
