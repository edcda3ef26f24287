"""The harness: config, data preparation, the Ray Train run, the Tune study, tracking."""

from harness.console import quiet_ray_log_forwarding

quiet_ray_log_forwarding()  # before anything imports Ray, which reads it at import
