"""Install CRDs into the test apiserver and wait until each is Established.

The test apiserver is Kubernetes 1.20 (scripts/k8s_testbed/build_apiserver.sh); the vendored CRDs are newer, so each
is first made loadable there (`for_old_apiserver`, after the gemma3-launch shared testbed's
crd_sanitize_for_old_k8s.py): CEL rules (x-kubernetes-validations, needs >= 1.25) are dropped - the offline tier
checks them instead (tests/k8s/cel_rules.py) - and 1.20 mis-reads empty-string defaults, so such properties lose
the default and become `required` (1.20 insists list-map keys have one or the other). Raw (non-preloaded) calls:
the client's typed models are newer than the server.
Usage: install_crd.py KUBECONFIG CRD_YAML...
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException


def for_old_apiserver(node: Any) -> Any:
    """`node` (a CRD or part of one) made loadable by a 1.20 apiserver, in place."""
    if isinstance(node, dict):
        node.pop("x-kubernetes-validations", None)
        properties = node.get("properties")
        if isinstance(properties, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and sub.get("default", None) == "":
                    sub.pop("default")
                    required = node.setdefault("required", [])
                    if name not in required:
                        required.append(name)
        for value in node.values():
            for_old_apiserver(value)
    elif isinstance(node, list):
        for value in node:
            for_old_apiserver(value)
    return node


def install_crd(kubeconfig: str, crd_path: str, timeout_s: float = 60.0) -> str:
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # the test server's self-signed cert
    with open(crd_path, encoding="utf-8") as handle:
        crd = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # up to 800 KB
    crd = for_old_apiserver(crd)
    api = client.ApiextensionsV1Api(config.new_client_from_config(config_file=kubeconfig))
    name = crd["metadata"]["name"]
    try:
        api.create_custom_resource_definition(body=crd, _preload_content=False)
    except ApiException as exc:
        if exc.status != 409:  # 409: already there (state dir reused)
            raise
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        raw = api.read_custom_resource_definition(name, _preload_content=False)
        conditions = (json.loads(raw.data).get("status") or {}).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
            return name
        time.sleep(0.2)
    raise TimeoutError(f"CRD {name} not Established after {timeout_s:.0f}s")


if __name__ == "__main__":
    for path in sys.argv[2:]:
        print(f"installed CRD {install_crd(sys.argv[1], path)}")
