"""The hostile-spec corpus, as a table: each case is a spec (YAML text, or the valid BASE spec with one field
changed) plus `--set` arguments, and the text the single error line must contain (the field it names).

Classes: YAML (duplicate keys, anchors/aliases, bombs, size, depth, YAML 1.1 scalars, tabs, tags, non-mappings),
control characters in every string field, credential-looking secrets/env/secret names, time limits, unknown keys,
wrong types, `--set` errors and kind rules. test_launcher_hostile.py runs them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import yaml

#: A spec that validates for every cluster kind and sets every string field the spec has.
BASE: dict[str, Any] = {
    "name": "hostile-base",
    "kind": "finetune",
    "model": "google/gemma-3-1b-pt",
    "recipe": "gemma3_1b_finetune",
    "peft": "lora",
    "overrides": ["train.train_iters=10"],
    "data": {"format": "sft", "paths": ["/data/sft/train.jsonl"]},
    "checkpoint": {"dir": "/ck/lora", "pretrained": "/ck/base"},
    "export": {"hf_path": "/ck/lora-hf"},
    "generate": {"prompt": "Hello", "max_new_tokens": 8},
    "resources": {"nodes": 1, "gpus_per_node": 0, "memory": "64G", "time_limit": "02:00:00"},
    "container": {"image": "ghcr.io/example/gemma3:1.0"},
    "mounts": [{"source": "/data", "target": "/data", "read_only": True}],
    "env": {"LOG_LEVEL": "info"},
    "secrets": ["HF_TOKEN"],
    "runs_dir": "./runs",
    "slurm": {"partition": "gpu", "account": "acct", "qos": "normal", "constraint": "h100", "extra_sbatch": []},
    "k8s": {
        "namespace": "ml",
        "secret_name": "hf-token",
        "pvcs": [{"claim": "ck", "mount_path": "/ck"}],
        "node_selector": {"gpu": "h100"},
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "priority_class": "high",
        "queue": "team-a",
        "service_account": "trainer",
    },
}

#: String fields of BASE, as dotted paths (list items by index); the property test fills each with text.
STRING_FIELDS = (
    "name",
    "model",
    "recipe",
    "overrides.0",
    "data.paths.0",
    "checkpoint.dir",
    "checkpoint.pretrained",
    "export.hf_path",
    "generate.prompt",
    "resources.memory",
    "resources.time_limit",
    "container.image",
    "mounts.0.source",
    "mounts.0.target",
    "env.LOG_LEVEL",
    "secrets.0",
    "runs_dir",
    "slurm.partition",
    "slurm.account",
    "slurm.qos",
    "slurm.constraint",
    "k8s.namespace",
    "k8s.secret_name",
    "k8s.pvcs.0.mount_path",
    "k8s.node_selector.gpu",
    "k8s.tolerations.0.key",
    "k8s.priority_class",
    "k8s.queue",
    "k8s.service_account",
)

#: Credential-shaped values (synthetic; each contains SENTINEL-free random-looking text the error must not echo).
CREDENTIALS = {
    "hf": "hf_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ",
    "openai": "sk-" + "proj-aB3dE5gH7jK9mN1pQ3sT5vW7",
    "ghp": "ghp_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ12",
    "gho": "gho_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ12",
    "github_pat": "github_pat_" + "11AB3dE5gH7jK9mN1pQ3sT5vW7",
    "aws": "AKIA" + "IOSFODNN7EXAMPLE",
    "slack": "xoxb-" + "1234567890-abcdefghij",
    "jwt": "eyJhbGciOiJIUzI1NiJ9" + ".eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "hex40": "0123456789abcdef0123456789abcdef01234567",
    "hex32": "a1b2c3d4e5f60718293a4b5c6d7e8f90",
    "base64": "Zm9vYmFyQmF6UXV4MTIzNDU2Nzg5MEFiQ2RFZkdo",
}


@dataclass(frozen=True)
class Case:
    id: str
    expect: str  # the error line must contain this (the field it names)
    text: str | bytes | None = None  # the spec file; None: BASE with `change` applied
    change: dict[str, Any] = field(default_factory=dict)  # dotted path -> value (DELETE removes it)
    sets: tuple[str, ...] = ()
    secret: str | None = None  # a value the error line must not contain


DELETE = object()


def set_path(data: Any, path: str, value: Any) -> None:
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value


def spec_text(case: Case) -> str | bytes:
    if case.text is not None:
        return case.text
    data = copy.deepcopy(BASE)
    for path, value in case.change.items():
        set_path(data, path, value)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=False, width=10_000)


def _head(body: str) -> str:
    return "name: hostile\nkind: import\nmodel: google/gemma-3-1b-pt\ncheckpoint: {dir: /ck}\n" + body


def _yaml_cases() -> list[Case]:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    deep_list = "[" * 40 + "]" * 40
    deep_map = "".join("  " * i + f"k{i}:\n" for i in range(40)) + "  " * 40 + "v: 1\n"
    return [
        Case("dup-top-name", "name: expected each key once", _head("name: other\n")),
        Case(
            "dup-gpus-per-node",
            "resources.gpus_per_node: expected each key once",
            _head("resources:\n  gpus_per_node: 8\n  gpus_per_node: 1\n"),
        ),
        Case("dup-flow-mapping", "resources.nodes", _head("resources: {nodes: 1, nodes: 2}\n")),
        Case("dup-quoted-and-plain", "model: expected each key once", _head('"model": other\n')),
        Case("dup-env-key", "env.A: expected each key once", _head("env:\n  A: x\n  A: y\n")),
        Case(
            "dup-in-list-item",
            "mounts.0.source",
            _head("mounts:\n  - source: /a\n    target: /a\n    source: /b\n"),
        ),
        Case("dup-names-first-line", "(first at line 1)", _head("name: again\n")),
        Case("anchor-alias", "resources: expected no anchors", _head("resources: &r {nodes: 1}\nslurm: *r\n")),
        Case("alias-bomb", "a: expected no anchors", _head(bomb)),
        Case("merge-key", "x: expected no anchors", _head("x: &b {nodes: 1}\nresources:\n  <<: *b\n")),
        Case("undefined-alias", "runs_dir: expected no aliases", _head("runs_dir: *nowhere\n")),
        Case("anchor-only", "runs_dir: expected no anchors", _head("runs_dir: &r /runs\n")),
        Case("size-comments", "expected at most 256 KiB", _head("#" + "x" * 300_000 + "\n")),
        Case("size-prompt", "expected at most 256 KiB", _head(f"runs_dir: '{'y' * 300_000}'\n")),
        Case("depth-list", "overrides.0.0: expected at most 32 levels", _head(f"overrides: {deep_list}\n")),
        Case(
            "depth-map",
            "env.k0.k1: expected at most 32 levels",
            _head("env:\n" + "  " + deep_map.replace("\n", "\n  ")),
        ),
        Case("sexagesimal-nodes", "resources.nodes: expected a valid integer", _head("resources: {nodes: 1:00}\n")),
        Case("yes-is-a-string", "slurm.exclusive: expected a valid boolean", _head("slurm: {exclusive: yes}\n")),
        Case("on-is-a-string", "mounts.0.read_only", _head("mounts: [{source: /a, target: /a, read_only: on}]\n")),
        Case("no-is-a-string", "slurm.exclusive", _head("slurm: {exclusive: no}\n")),
        Case("underscore-int", "slurm.max_requeues", _head("slurm: {max_requeues: 1_0}\n")),
        Case("hex-int-too-big", "resources.nodes", _head("resources: {nodes: 0x800}\n")),
        Case("date-is-a-string", "kind", "name: x\nkind: 2024-01-05\n"),
        Case("tab-indent", "expected valid YAML", _head("resources:\n\tnodes: 1\n")),
        Case("top-list", "expected a YAML mapping", "- name: x\n- kind: import\n"),
        Case("top-scalar", "expected a YAML mapping", "hello\n"),
        Case("top-empty", "expected a YAML mapping", ""),
        Case("top-null", "expected a YAML mapping", "~\n"),
        Case("only-comments", "expected a YAML mapping", "# nothing here\n"),
        Case("tag-python", "expected no YAML tag", _head("runs_dir: !!python/object/apply:os.system [id]\n")),
        Case("tag-binary", "runs_dir: expected no YAML tag", _head("runs_dir: !!binary aGVsbG8=\n")),
        Case("tag-set", "expected no YAML tag", _head("secrets: !!set {HF_TOKEN}\n")),
        Case("tag-custom", "expected no YAML tag", _head("runs_dir: !local /runs\n")),
        Case("tag-timestamp", "expected no YAML tag", _head("runs_dir: !!timestamp 2024-01-05\n")),
        Case("tag-int-bad", "expected a value its tag can hold", _head("resources: {time_limit: !!int 4:00:00}\n")),
        Case("complex-key", "expected plain scalar keys", _head("? [a, b]\n: 1\n")),
        Case("key-int", "1: expected a name as key", _head("1: x\n")),
        Case("key-bool", "true: expected a name as key", _head("true: x\n")),
        Case("key-null", "~: expected a name as key", _head("~: x\n")),
        Case("key-int-in-env", "env.1: expected a name as key", _head("env: {1: x}\n")),
        Case("key-quoted-digit-in-env", "env.1: expected an environment variable name", _head('env: {"1": x}\n')),
        Case("int-5000-digits", "expected a value its tag can hold", _head(f"resources: {{nodes: {'9' * 5000}}}\n")),
        Case("raw-control-char", "expected printable text", _head("runs_dir: /ru\x07ns\n")),
        Case("invalid-utf8", "expected a UTF-8 text file", _head("runs_dir: /r").encode() + b"\xff\xfe\n"),
        Case("unclosed-quote", "expected valid YAML", _head("runs_dir: 'open\n")),
        Case("two-documents", "expected valid YAML", _head("---\nname: second\n")),
        Case("flow-unclosed", "expected valid YAML", _head("resources: {nodes: 1\n")),
    ]


#: Control characters and line breaks each string field must refuse.
_CONTROLS = {"nl": "\n", "esc": "\x1b", "nul": "\x00", "del": "\x7f", "cr": "\r", "nel": "\x85", "ls": "\u2028"}


def _control_cases() -> list[Case]:
    out = []
    for path in STRING_FIELDS:
        chars = ("nl", "esc") if path != "generate.prompt" else ("esc", "nul", "cr", "del", "nel", "ls")
        for name in chars:
            value = _value_for(path)
            value = value[:2] + _CONTROLS[name] + value[2:]
            out.append(Case(f"control-{name}-{path}", f"{path}: expected text without control", change={path: value}))
    out += [
        Case("control-env-key", "env.A", change={"env": {"A\x1bB": "x"}}),
        Case("control-node-selector-key", "k8s.node_selector.g", change={"k8s.node_selector": {"g\npu": "x"}}),
        Case("control-prompts-file", "generate.prompts_file", change={"generate": {"prompts_file": "/p\n.txt"}}),
        Case("control-extra-sbatch", "slurm.extra_sbatch.0", change={"slurm.extra_sbatch": ["--comment=a\nb"]}),
        Case("control-toleration-value", "k8s.tolerations.0.value", change={"k8s.tolerations.0.value": "a\tb"}),
        Case("surrogate-runs-dir", "runs_dir: expected text without control", change={"runs_dir": "/r\ud800"}),
    ]
    return out


def _value_for(path: str) -> str:
    data: Any = BASE
    for part in path.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return str(data)


def _credential_cases() -> list[Case]:
    out = []
    for kind, value in CREDENTIALS.items():
        out.append(Case(f"secret-name-{kind}", "secrets.1", change={"secrets": ["HF_TOKEN", value]}, secret=value))
    for kind in ("hf", "aws", "jwt", "hex40", "slack", "base64"):
        value = CREDENTIALS[kind]
        out.append(Case(f"env-value-{kind}", "env.LOG_LEVEL", change={"env.LOG_LEVEL": value}, secret=value))
    for kind in ("hex40", "hex32", "hf"):
        value = CREDENTIALS[kind]
        out.append(Case(f"secret-name-k8s-{kind}", "k8s.secret_name", change={"k8s.secret_name": value}, secret=value))
    hf = CREDENTIALS["hf"]
    out += [
        Case(
            "env-key-credential",
            "env.<redacted>: expected an environment variable name",
            change={"env": {hf: "x"}},
            secret=hf[4:],
        ),
        Case("env-secret-name", "env.HF_TOKEN", change={"env": {"HF_TOKEN": "x"}}),
        Case("env-token-name", "env.MY_API_TOKEN", change={"env": {"MY_API_TOKEN": "x"}}),
        Case("expand-secret", "runs_dir: expected no secret", change={"runs_dir": "/r/${HF_TOKEN}"}),
        Case("secret-via-set", "secrets.1", sets=(f"secrets+={hf}",), secret=hf),
        Case("credential-in-unknown-key", "unknown key", change={hf: 1}, secret=hf),
        Case(
            "credential-in-bad-name",
            "name: expected",
            change={"name": "X" + CREDENTIALS["hex40"]},
            secret="0123456789ab",
        ),
    ]
    return out


def _time_cases() -> list[Case]:
    bad = {
        "zero-hms": "00:00:00",
        "zero-int": 0,
        "zero-mm": "0",
        "negative": -5,
        "day-hours-25": "1-25:00:00",
        "minutes-61": "10:61:00",
        "seconds-61": "10:00:61",
        "over-a-year": "366-00:00:00",
        "over-a-year-minutes": 600_000,
        "words": "four hours",
        "suffix-h": "4h",
        "bool": True,
        "float": 1.5,
        "below-margin-mm": "5",
        "below-margin-int": 10,
        "equal-margin": "00:15:00",
        "dangling-day": "1-",
        "leading-dash": "-1",
        "four-parts": "1:2:3:4",
        "huge-digits": "99999999",
        "null": None,
        "list": ["04:00:00"],
    }
    out = [Case(f"time-{k}", "resources.time_limit", change={"resources.time_limit": v}) for k, v in bad.items()]
    out.append(
        Case(
            "time-below-long-lead",
            "resources.time_limit",
            change={"resources.time_limit": "01:00:00", "slurm.signal_lead_s": 3600},
        )
    )
    return out


def _unknown_and_type_cases() -> list[Case]:
    unknown = {
        "gpus_per_node": 8,
        "resources.gpus_per_nod": 8,
        "slurm.partitionn": "x",
        "generate.promt": "x",
        "mounts.0.src": "/x",
        "export.path": "/x",
        "checkpoint.dirr": "/x",
        "container.img": "x",
    }
    out = [Case(f"unknown-{k}", f"{k}: unknown key", change={k: v}) for k, v in unknown.items()]
    types = {
        "name": 5,
        "kind": ["finetune"],
        "resources.nodes": "2",
        "resources.cpus_per_task": 1.5,
        "resources.gpus_per_node": True,
        "overrides": "train.train_iters=1",
        "env": ["A=b"],
        "secrets": "HF_TOKEN",
        "mounts": {"source": "/a"},
        "runs_dir": 5,
        "data": ["x"],
        "generate.max_new_tokens": 0,
        "resources.memory": "64GB",
        "slurm.master_port": 80,
        "slurm.extra_sbatch": ["-x"],
        "env.LOG_LEVEL": 3,
        "peft": "qlora",
        "torch_dtype": "fp16",
        "resources.nproc_per_node": 0,
    }
    out += [Case(f"type-{k}", k, change={k: v}) for k, v in types.items()]
    out += [
        Case("type-name-uppercase", "name: expected lowercase", change={"name": "Bad_Name"}),
        Case("type-name-too-long", "name: expected lowercase", change={"name": "a" * 41}),
        Case("type-mount-relative", "mounts.0.source: expected an absolute path", change={"mounts.0.source": "data"}),
        Case("type-mount-colon", "mounts.0.target", change={"mounts.0.target": "/a:/b"}),
        Case("type-override-no-eq", "overrides.0", change={"overrides": ["train.train_iters"]}),
        Case("type-env-name", "env", change={"env": {"1BAD": "x"}}),
        Case("type-unset-var", "runs_dir: expected environment variable", change={"runs_dir": "${GEMMA3_UNSET_X}"}),
    ]
    return out


def _set_cases() -> list[Case]:
    sets = {
        "no-key": ("=1", "--set"),
        "no-equals": ("resources.nodes", "--set resources.nodes"),
        "double-dot": ("resources..nodes=1", "--set resources..nodes"),
        "digit-start": ("1abc=2", "--set 1abc"),
        "not-a-number": ("resources.nodes=abc", "resources.nodes"),
        "not-a-section": ("name.sub=x", "--set name.sub"),
        "append-to-scalar": ("resources.nodes+=1", "--set resources.nodes+="),
        "append-a-mapping": ("overrides+={a: 1}", "overrides.1"),
        "anchor": ("resources.gpus_per_node=&a 1", "--set resources.gpus_per_node: expected no anchors"),
        "alias": ("overrides=*x", "--set overrides: expected no aliases"),
        "unknown": ("resources.gpu=1", "resources.gpu: unknown key"),
        "zero-time": ("resources.time_limit=0", "resources.time_limit"),
        "secret-env": ("env.HF_TOKEN=x", "env.HF_TOKEN"),
        "tag": ("generate.prompt=!!binary aGk=", "--set generate.prompt: expected no YAML tag"),
        "control-escape": ('runs_dir="/a\\eb"', "runs_dir: expected text without control"),
        "control-raw-newline": ("runs_dir=/a\nb", "runs_dir: expected text without control"),
        "control-raw-esc-prompt": ("generate.prompt=a\x1b[2Jb", "generate.prompt: expected text without control"),
        "dup-key": ("resources={nodes: 1, nodes: 2}", "--set resources: expected each key once"),
        "depth": ("overrides=" + "[" * 40 + "]" * 40, "--set overrides: expected at most 32"),
        "null-required": ("name=null", "name"),
        "kind-bad": ("kind=train", "kind"),
        "list-for-scalar": ("runs_dir=[a, b]", "runs_dir"),
    }
    return [Case(f"set-{k}", expect, sets=(item,)) for k, (item, expect) in sets.items()]


def _kind_cases() -> list[Case]:
    imp = {"kind": "import", "recipe": DELETE, "overrides": DELETE, "peft": DELETE, "data": DELETE}
    imp |= {"export": DELETE, "generate": DELETE, "checkpoint.pretrained": DELETE}
    return [
        Case("kind-peft-pretrain", "peft", change={"kind": "pretrain", "recipe": "gemma3_1b_pretrain"}),
        Case("kind-no-recipe", "recipe", change={"recipe": DELETE}),
        Case("kind-recipe-typo", "recipe: expected a known recipe", change={"recipe": "gemma3_1b_finetun"}),
        Case("kind-pretrain-recipe", "recipe: expected a *_finetune", change={"recipe": "gemma3_1b_pretrain"}),
        Case("kind-recipe-on-import", "recipe", change={**imp, "recipe": "gemma3_1b_finetune"}),
        Case("kind-import-no-model", "model", change={**imp, "model": DELETE}),
        Case("kind-import-data", "data", change={**imp, "data": {"format": "mock"}}),
        Case("kind-import-two-nodes", "resources.nodes", change={**imp, "resources.nodes": 2}),
        Case("kind-no-ckpt-dir", "checkpoint.dir", change={"checkpoint.dir": DELETE}),
        Case("kind-both-prompts", "generate", change={"generate.prompts_file": "/p.txt"}),
        Case("kind-generate-no-export", "generate", change={"export": DELETE}),
        Case(
            "kind-before-on-generate",
            "generate.before",
            change={**imp, "kind": "generate", "generate": {"prompt": "x", "before": True}},
        ),
        Case("kind-pypi-other", "model", change={"model": "pypi:llama"}),
        Case("kind-sft-no-paths", "data.paths", change={"data.paths": []}),
        Case("kind-mock-with-paths", "data.paths", change={"data.format": "mock"}),
        Case("kind-secret-also-env", "env.LOG_LEVEL", change={"env": {"LOG_LEVEL": "x"}, "secrets": ["LOG_LEVEL"]}),
        Case("kind-duplicate-secrets", "secrets", change={"secrets": ["HF_TOKEN", "HF_TOKEN"]}),
        Case(
            "kind-nproc-over-gpus",
            "resources.nproc_per_node",
            change={"resources.gpus_per_node": 1, "resources.nproc_per_node": 2},
        ),
    ]


CASES: list[Case] = [
    *_yaml_cases(),
    *_control_cases(),
    *_credential_cases(),
    *_time_cases(),
    *_unknown_and_type_cases(),
    *_set_cases(),
    *_kind_cases(),
]
