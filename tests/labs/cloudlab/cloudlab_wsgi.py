"""gunicorn entry point for the lab's API services (runs in the services' venv).

The services parse `sys.argv` with oslo.config and reject gunicorn's own arguments, so this
resets `sys.argv` (to CLOUDLAB_WSGI_ARGV, a JSON list such as ["--config-file", "..."]) before it
imports CLOUDLAB_WSGI_MODULE (e.g. "keystone.wsgi.api") and exposes its `application`.
"""

import importlib
import json
import os
import sys

sys.argv = [os.environ["CLOUDLAB_WSGI_MODULE"], *json.loads(os.environ.get("CLOUDLAB_WSGI_ARGV",
                                                                             "[]"))]
application = importlib.import_module(os.environ["CLOUDLAB_WSGI_MODULE"]).application
