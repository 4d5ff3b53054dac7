"""Tooling the tests and the benchmark share: the stack's configuration, the program under mocks, the local deployer."""
