"""examples/: the liveness check the systemd and Kubernetes examples use, against a real
worker (fails without one, passes while it beats, fails once its heartbeat is stale),
and the clean SIGTERM they rely on."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import mirrortools as mt

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ALIVE = ROOT / "examples" / "kafka-mirrors-alive"


def alive(mirroring, max_age: int) -> subprocess.CompletedProcess:
    bindir = Path(sys.executable).parent
    if not (bindir / "kafka-mirrors").exists():
        pytest.skip("the kafka-mirrors console script is not installed beside this python")
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
           "KAFKA_MIRRORS_REGISTRY": str(mirroring.registry_path)}
    return subprocess.run(["sh", str(ALIVE), mirroring.name, str(max_age)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_liveness_check_follows_the_worker_heartbeat(mirroring):
    topic = mirroring.new_mirror(partitions=2, records=20)
    r = alive(mirroring, 60)
    assert r.returncode == 1, "no worker has run: not alive"
    assert "heartbeat missing" in r.stderr

    worker = mirroring.start_worker()
    mirroring.wait_worker_serving(topic)
    mirroring.wait_caught_up(topic)
    r = alive(mirroring, 60)
    assert r.returncode == 0, r.stderr

    # a clean SIGTERM: exit 0 (the Restart=on-failure / restartPolicy premise) ...
    mirroring.stop_worker(worker)
    # ... and the last heartbeat ages past MAX_AGE
    mt.wait_until(lambda: alive(mirroring, 2).returncode == 1, 30, "the liveness check to fail", interval=1)
