"""``python -m inferq`` and the ``inferq`` console script."""

import sys


def run() -> None:
    """Run the command line; ``inferq api`` first lets gevent patch the standard library."""
    if sys.argv[1:2] == ["api"]:
        # gunicorn's gevent worker patches when it starts, too late: by then this process
        # has imported ssl (requests, urllib3, boto3), and their direct imports would keep
        # blocking sockets. The arbiter runs patched too, as gunicorn allows.
        from gevent import monkey

        monkey.patch_all()
    from inferq.cli import main

    main()


if __name__ == "__main__":
    run()
