"""recorder: a job-history recorder for useapi.net scheduler endpoints."""

__version__ = "0.1.0"
