"""The harness: config, data preparation, the Ray Train run, the Tune study, tracking."""

from harness.console import local_ray_environment, quiet_ray_log_forwarding

# Before anything imports Ray, which reads both at import.
quiet_ray_log_forwarding()
local_ray_environment()
