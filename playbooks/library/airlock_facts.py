#!/usr/bin/python
"""Ansible module: this host's airlock facts and runtime decision as ansible_facts."""

DOCUMENTATION = r"""
---
module: airlock_facts
short_description: Detect host hardware and choose llama-server settings for an airlock bundle
description:
  - Runs C(runtime.detect) and C(runtime.select) from the airlock C(runtime) package that the
    bundle ships, in-process, on the managed host with the host's Python (3.8+).
  - The module embeds nothing: it imports the package from I(runtime_dir), so the rules that
    run are exactly the ones that were signed into the bundle being installed.
  - Read-only; never reports a change; supports check mode.
options:
  runtime_dir:
    description: Directory that contains the C(runtime/) package (an unpacked release directory).
    type: path
    required: true
  manifest:
    description: The verified bundle manifest (JSON) on the host.
    type: path
    required: true
  release_dir:
    description:
      - Installed release directory. When given, argv/env/cwd paths are absolute under it and
        the bundled C(llama-server --help) is probed for C(--offline) and C(--no-webui).
    type: path
  install_path:
    description: Where releases are installed; its free disk is reported in the facts.
    type: path
  overrides:
    description: Operator overrides (ctx_size, parallel, threads, gpu_layers, backend, host, port,
      model, api_key_file).
    type: dict
    default: {}
  root:
    description: Read /proc and /sys under this directory (fixture trees in tests).
    type: path
    default: /
  fail_on_misfit:
    description:
      - Fail when the host cannot run the bundle (exit code 50 class, e.g. the model does not
        fit in memory). When false, the refusal is returned in C(airlock_refusal) instead.
    type: bool
    default: true
author: airlock
"""

EXAMPLES = r"""
- name: Host facts and runtime decision
  airlock_facts:
    runtime_dir: /opt/airlock/releases/1.0.0
    manifest: /opt/airlock/releases/1.0.0/airlock/manifest.json
    release_dir: /opt/airlock/releases/1.0.0
    overrides: "{{ airlock_server_overrides }}"
- name: Show the decision
  ansible.builtin.debug:
    var: airlock_decision.reasons
"""

RETURN = r"""
ansible_facts:
  description: airlock_host (runtime.detect facts) and airlock_decision (runtime.select).
  returned: always
  type: dict
airlock_refusal:
  description: Why the host cannot run the bundle (message, problems, hint, exit_code).
  returned: when fail_on_misfit is false and the host was refused
  type: dict
"""

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def _import_runtime(runtime_dir):
    """Import runtime.detect/select/errors from the bundle's copy, not from anywhere else."""
    if not os.path.isfile(os.path.join(runtime_dir, "runtime", "select.py")):
        raise ImportError(
            f"{runtime_dir} does not contain the airlock runtime package (runtime/select.py)"
        )
    sys.path.insert(0, runtime_dir)
    for name in list(sys.modules):
        if name == "runtime" or name.startswith("runtime."):
            del sys.modules[name]
    import runtime.detect as detect
    import runtime.errors as errors
    import runtime.select as select

    return detect, select, errors


def main():
    module = AnsibleModule(
        argument_spec=dict(
            runtime_dir=dict(type="path", required=True),
            manifest=dict(type="path", required=True),
            release_dir=dict(type="path"),
            install_path=dict(type="path"),
            overrides=dict(type="dict", default={}),
            root=dict(type="path", default="/"),
            fail_on_misfit=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        detect, select, errors = _import_runtime(p["runtime_dir"])
    except ImportError as e:
        module.fail_json(
            msg=f"cannot load the airlock runtime: {e}",
            hint="point runtime_dir at an unpacked release directory",
        )

    facts = detect.detect(Path(p["root"]), Path(p["install_path"]) if p["install_path"] else None)
    result = dict(changed=False, ansible_facts=dict(airlock_host=facts, airlock_decision=None))
    try:
        with open(p["manifest"], "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
        overrides = dict((k, v) for k, v in (p["overrides"] or {}).items() if v is not None)
        release_dir = Path(p["release_dir"]) if p["release_dir"] else None
        decision = select.decide(facts, manifest, overrides, release_dir=release_dir)
    except (OSError, ValueError) as e:
        module.fail_json(msg="cannot read the manifest {}: {}".format(p["manifest"], e), **result)
    except errors.AirlockError as e:
        refusal = dict(
            message=e.message, problems=list(e.problems), hint=e.hint, exit_code=e.exit_code
        )
        if p["fail_on_misfit"] or not isinstance(e, errors.HostError):
            module.fail_json(msg=e.render(), airlock_refusal=refusal, **result)
        result["airlock_refusal"] = refusal
        module.exit_json(**result)
    result["ansible_facts"]["airlock_decision"] = decision
    module.exit_json(**result)


if __name__ == "__main__":
    main()
