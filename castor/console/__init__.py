"""``castor console``: approvals, runs and budget scopes in a browser, and the same as an HTTP JSON API.

    command    the ``castor console`` command: picks the store, checks the binding, serves
    app        the ASGI app (``create_app``): routes, lifespan, error pages
    service    what the console does over a store (pages and API both call it)
    auth       tokens, sessions, roles, CSRF          context   what every handler shares
    api        the JSON API (+ ``openapi``)            pages     the HTML pages (Jinja2 templates)
    feed       live updates (server-sent events)      webhook   a message per new pending call

Importing this package imports nothing heavy: Starlette, Jinja2 and uvicorn (the ``console`` extra) are
imported by ``app`` and by the command when it runs.
"""
