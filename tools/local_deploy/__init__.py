"""Runs the Pulumi program against the local Docker engine (see deployer.py); `python -m tools.local_deploy`."""
