"""The one exception of the cluster package: bad input, printed by `fair` as one line with exit code 2."""
from __future__ import annotations


class ClusterError(Exception):
    """A user error (unreachable cluster, unknown job, invalid launcher config, ...): one line, exit 2."""

    user_error = True
