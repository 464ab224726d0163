"""The local stack behind ``inferq up``: embedded Postgres and Redis, nginx, supervisord.

Imports ``inferq.core`` and ``db``; it starts the services as processes, never imports them."""
