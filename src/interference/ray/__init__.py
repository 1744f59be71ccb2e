"""interference as a Ray Serve application: an ingress with the HTTP API, engine replicas behind it.

This package is a composition root of its own (``build_app``); only the ``serve --ray`` path of the
command line imports it, so the base install never imports Ray.
"""
