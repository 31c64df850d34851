"""The bundled engine on a real older userland: Debian bullseye (glibc 2.31, GCC 10's libstdc++).

The root filesystem comes from Debian's registry (mmdebstrap, cached outside the repository
by ``tests.rootfs``). ``llama-server`` runs chrooted into it, in fresh network and mount
namespaces with only a loopback interface (no route anywhere), so the only glibc and
libstdc++ its loader can find are bullseye's: both older than the build machine's (Debian 12:
glibc 2.36, GLIBCXX_3.4.30). The bundled engine is the portable toolchain's (glibc 2.28
symbol versions, libc++ linked into each file and kept private to it). The client is this
machine's Python in the same network namespace, using the health gate's own checks
(``runtime.health``): ``/health`` 200 and one real completion on the tiny generated model.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bundler.demo.tinymodel import TinyModelOptions, write_tiny_model
from bundler.engine import llamacpp
from runtime.detect import detect
from tests.integration.llamacpp_support import engine_build
from tests.rootfs import debian_rootfs

pytestmark = [pytest.mark.slow, pytest.mark.netns]

REPO = Path(__file__).resolve().parents[2]

CLIENT = """\
import sys
sys.path.insert(0, {repo!r})
from runtime.health import check_completion, wait_healthy
pid = sys.argv[1]  # the chroot running llama-server: a loader failure ends the wait at once


def alive():
    try:
        with open("/proc/" + pid + "/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


wait_healthy("http://127.0.0.1:8080", timeout=120, alive=alive)
print("COMPLETION:", repr(check_completion("http://127.0.0.1:8080", timeout=60)))
"""

RUN = """\
set -u
ip link set lo up
mount --bind {payload} {root}/mnt
mount -t proc proc {root}/proc
chroot {root} /bin/sh -c 'cd /mnt/engine/lib && exec /mnt/engine/bin/llama-server \\
    -m /mnt/tiny.gguf --host 127.0.0.1 --port 8080 -c 256 -np 1 -t 2 --offline' \\
    > {log} 2>&1 &
server=$!
{python} {client} $server
rc=$?
kill $server 2>/dev/null
wait $server
exit $rc
"""


def serve_in_rootfs(root: Path, engine: Path, work: Path) -> tuple[int, str, str]:
    """Run ``engine``'s llama-server chrooted into ``root`` with no network; (rc, out, log).

    ``engine`` holds ``bin/`` and ``lib/``. Only this call's mount namespace sees the bind
    mounts: the cached tree is never written.
    """
    payload = work / "payload"
    shutil.copytree(engine, payload / "engine")
    write_tiny_model(payload / "tiny.gguf", TinyModelOptions())
    client = work / "client.py"
    client.write_text(CLIENT.format(repo=str(REPO)))
    log = work / "server.log"
    script = work / "run.sh"
    script.write_text(
        RUN.format(payload=payload, root=root, log=log, python=sys.executable, client=client)
    )
    proc = subprocess.run(
        ["unshare", "--net", "--mount", "--propagation", "private", "--fork", "sh", str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    server_log = log.read_text(errors="replace") if log.exists() else ""
    return proc.returncode, proc.stdout + proc.stderr, server_log


def test_bundled_llama_server_serves_on_debian_bullseye_with_no_network(tmp_path: Path) -> None:
    root = debian_rootfs("bullseye")
    libc = detect(root)["libc"]
    # really older than the build machine, on both counts
    assert (libc["glibc"], libc["glibcxx"]) == ("2.31", "3.4.28")
    build = engine_build()
    # the bundled engine: the portable toolchain's, which needs no host libstdc++ at all
    assert build.properties["glibcxx_min"] is None, build.properties["compiler"]
    llamacpp.stage_engine(build, tmp_path / "engine")
    rc, out, log = serve_in_rootfs(root, tmp_path / "engine", tmp_path / "run")
    assert rc == 0, out[-3000:] + "\n--- server log ---\n" + log[-3000:]
    assert "COMPLETION: '" in out
    assert "GLIBC" not in log
