"""playbooks/library/airlock_facts.py under a real ansible-playbook run (local connection)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from tests.unit.runtime.test_select import ALL_X86, MISTRAL, manifest

REPO = Path(__file__).resolve().parent.parent.parent
HOSTS = REPO / "tests" / "fixtures" / "hosts"

PLAYBOOK = """
- name: airlock_facts
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: fits
      airlock_facts:
        runtime_dir: "{{ repo }}"
        manifest: "{{ tmp }}/tiny.json"
        root: "{{ container }}"
        overrides: {parallel: 2, threads: null}
      register: r_fits
    - name: decision is a fact
      ansible.builtin.set_fact:
        first_decision: "{{ airlock_decision }}"
        first_cgroup: "{{ airlock_host.cgroup.version }}"
    - name: misfit fails
      airlock_facts:
        runtime_dir: "{{ repo }}"
        manifest: "{{ tmp }}/mistral.json"
        root: "{{ container }}"
      register: r_misfit
      ignore_errors: true
    - name: misfit reported
      airlock_facts:
        runtime_dir: "{{ repo }}"
        manifest: "{{ tmp }}/mistral.json"
        root: "{{ container }}"
        fail_on_misfit: false
      register: r_report
    - name: wrong runtime dir
      airlock_facts:
        runtime_dir: "{{ tmp }}"
        manifest: "{{ tmp }}/tiny.json"
      register: r_wrong
      ignore_errors: true
    - name: results
      ansible.builtin.copy:
        dest: "{{ tmp }}/out.json"
        mode: "0644"
        content: "{{ {'fits': r_fits, 'misfit fails': r_misfit, 'misfit reported': r_report,
                      'wrong runtime dir': r_wrong, 'decision': first_decision,
                      'cgroup': first_cgroup} | to_json }}"
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("facts")
    (tmp / "tiny.json").write_text(json.dumps(manifest(variants=ALL_X86)))
    (tmp / "mistral.json").write_text(json.dumps(manifest(variants=ALL_X86, models=[MISTRAL])))
    (tmp / "play.yml").write_text(PLAYBOOK)
    env = dict(os.environ)
    env.update(
        ANSIBLE_LIBRARY=str(REPO / "playbooks" / "library"),
        ANSIBLE_LOCALHOST_WARNING="False",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="False",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        ANSIBLE_HOME=str(tmp / "ansible-home"),
    )
    extra = json.dumps(
        {
            "repo": str(REPO),
            "tmp": str(tmp),
            "container": str(HOSTS / "container-cgroup2-2cpu-4g" / "root"),
        }
    )
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            "localhost,",
            "-e",
            extra,
            str(tmp / "play.yml"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: Dict[str, Dict[str, Any]] = json.loads((tmp / "out.json").read_text())
    return result


def test_module_returns_facts_and_decision_without_change(run: Dict[str, Any]) -> None:
    fits = run["fits"]
    assert fits.get("failed") is not True, fits
    assert fits["changed"] is False
    decision = fits["ansible_facts"]["airlock_decision"]
    assert decision["parallel"] == 2
    assert "ctx 4096, 2 slot(s): operator override (the other one auto)" in decision["reasons"]
    # ansible_facts became host facts: the next task saw airlock_decision.
    assert run["decision"]["threads"] == 2
    assert run["cgroup"] == 2


def test_module_fails_a_host_the_model_cannot_fit(run: Dict[str, Any]) -> None:
    res = run["misfit fails"]
    assert res["failed"] is True
    assert "model mistral-7b needs" in res["msg"]
    assert "limited by cgroup memory.max" in res["msg"]
    assert res["airlock_refusal"]["exit_code"] == 50


def test_module_can_report_a_misfit_for_preflight(run: Dict[str, Any]) -> None:
    res = run["misfit reported"]
    assert res.get("failed") is not True
    assert res["airlock_refusal"]["exit_code"] == 50
    assert res["ansible_facts"]["airlock_decision"] is None


def test_module_refuses_a_directory_without_the_runtime(run: Dict[str, Any]) -> None:
    res = run["wrong runtime dir"]
    assert res["failed"] is True
    assert "does not contain the airlock runtime package" in res["msg"]
