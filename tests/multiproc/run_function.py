"""Entry point for tests' torchrun helper: `run_function.py module:function '{"kwarg": ...}'` on every rank."""

import importlib
import json
import sys

if __name__ == "__main__":
    target, kwargs = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    module_name, func_name = target.split(":")
    getattr(importlib.import_module(module_name), func_name)(**kwargs)
