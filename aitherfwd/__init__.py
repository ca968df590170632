"""aitherfwd: a host firewall daemon that keeps nftables table `inet aitherfwd` in sync with a policy."""

__version__ = "0.1.0"
