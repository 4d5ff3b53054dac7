"""Moved to tools/stack_config.py, which the tools read too; these names stay importable from here."""

from tools.stack_config import PROJECT_DIR, STACKS, project_file, project_name, runtime_config, stack_config

__all__ = ["PROJECT_DIR", "STACKS", "project_file", "project_name", "runtime_config", "stack_config"]
