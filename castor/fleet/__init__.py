"""The fleet's public API: what a fleet role (a worker, a coordinator) or an operator's tool uses of Castor.

A fleet is Celery workers that run tool calls and coordinators that drive runs, sharing Redis and a broker.
The two roles live in the repository's ``workers/`` and ``scheduler/`` folders and are installed as
``castor.fleet.workers`` and ``castor.fleet.scheduler``. They import Castor only through public modules,
and these are the ones made for them (``tests/test_imports.py`` holds them to it):

- ``castor.fleet.wire``: the wire format, tool tasks (``Job``) and replies (``Reply``), signed and checked.
- ``castor.fleet.client``: the operator's side of a fleet, ``FleetClient`` and ``new_run``.
- ``castor.fleet.driver``: driving a leased run with the kernel's runner, and saving where it stopped.
- ``castor.fleet.celery_config``: the Celery configuration every fleet process shares.
- ``castor.fleet.broker``: the broker's errors in plain words.
- ``castor.fleet.kombu_keys``: the Redis keys kombu stores a message under, asked from kombu.
- ``castor.fleet.sealing``: the fleet's shared secret and the sealing of sensitive arguments.
- ``castor.fleet.records``: canonical JSON, redaction and unique ids, as the kernel writes them.
- ``castor.fleet.loading``: loading the tools and agents a process's config names.
- ``castor.fleet.background``: stopping background asyncio tasks for sure.
- ``castor.fleet.commands``: the ``worker`` and ``flower`` subcommands, for a role's own entry point.

Also public and used by the roles: ``castor.errors``, ``castor.settings``, ``castor.registry``,
``castor.seams``, ``castor.checkpoint``, ``castor.kernel``, ``castor.backends.redis`` (with ``keys``,
``scripts``, ``journal`` and ``resp``, the RESP core). Importing this package loads nothing else: the roles
sit under it, and ``import castor`` must not load redis or celery.
"""
