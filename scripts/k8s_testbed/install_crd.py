"""Install a CRD into the test apiserver and wait until it is Established.

Raw (non-preloaded) calls: the client's typed models are newer than the 1.20 server and the CRD carries fields
(x-kubernetes-validations) that 1.20 drops, so we neither validate client-side nor deserialize the echo.
Usage: install_crd.py KUBECONFIG CRD_YAML
"""

from __future__ import annotations

import json
import sys
import time

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException


def install_crd(kubeconfig: str, crd_path: str, timeout_s: float = 30.0) -> str:
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # the test server's self-signed cert
    with open(crd_path, encoding="utf-8") as handle:
        crd = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 600 KB
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
    print(f"installed CRD {install_crd(sys.argv[1], sys.argv[2])}")
