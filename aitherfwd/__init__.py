"""aitherfwd: a host firewall daemon keeping table `inet aitherfwd` in sync with a policy."""

__version__ = "0.1.0"
