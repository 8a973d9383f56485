"""What a run publishes once it has ended: Prometheus metrics, a notification, the summary.

Publishing happens after the run is stored and never changes what was stored or the exit
status: a target that cannot be reached is logged (and retried, for network sends).
"""
