"""The firewall's policy at the HTTP layer, for ASGI services behind proxies and tunnels.

`from aitherfwd.asgi import FirewallMiddleware; app = FirewallMiddleware(app)` — see
docs/middleware.md. Modules: `clientaddr` (which address is the client; pure), `view` (the
local evaluator over the policy the daemon sent; pure), `state` (what the middleware knows of
the daemon), `follower` (the watch stream and threat reports over the control socket),
`middleware` (the ASGI middleware). Needs no web framework at run time.
"""

from aitherfwd.asgi.middleware import FirewallMiddleware

__all__ = ["FirewallMiddleware"]
