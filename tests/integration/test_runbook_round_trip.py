"""docs/runbook.md sections 1 and 2 there and back, with the runbook's own commands: promote
over `dr`, reverse-and-start, promote back over `dr-reverse`, and reverse-and-start again
under a fresh link name (the forward link still holds the promoted mirror, so it is
refused as the way back)."""
import pytest

from kafka_mirrors import state as st
from tests import drills
from tests import mirrortools as mt
from tests.mirroring import Mirroring

pytestmark = pytest.mark.integration


def test_primary_moves_to_the_destination_and_back(cli, mirroring, source, destination):
    dr = mirroring.name
    topic = mirroring.new_mirror(partitions=2)
    drills.produce_phase(source, topic, "before", 30, 2)
    mirroring.start_worker()
    mirroring.wait_caught_up(topic)

    # section 1 then 2: dst becomes the primary, src follows it
    assert cli("describe", "--link", dr, "--check", "--max-lag", "0").exit_code == 0
    r = cli("promote", topic, "--link", dr, "--yes", "--timeout", "60")
    assert r.exit_code == 0, r.stderr
    r = cli("reverse-and-start", topic, "--link", dr, "--yes")
    assert r.exit_code == 0, r.stderr
    back = Mirroring.for_link(mirroring, f"{dr}-reverse", source=destination, destination=source)
    back.start_worker()
    drills.produce_phase(destination, topic, "on-dst", 10, 2)
    back.wait_caught_up(topic)

    # the way back: promote over the reverse link ...
    assert cli("describe", "--link", back.name, "--check", "--max-lag", "0").exit_code == 0
    r = cli("promote", topic, "--link", back.name, "--yes", "--timeout", "60")
    assert r.exit_code == 0, r.stderr
    # ... the forward link cannot take the mirror again: it holds the promoted one
    r = cli("reverse-and-start", topic, "--link", back.name, "--reverse-link", dr, "--yes")
    assert r.exit_code == 1
    assert f"'{topic}' is a mirror on link '{dr}' already (STOPPED)" in r.stderr
    # ... a fresh name for the link back works, nothing copied again
    again = f"{dr}-2"
    r = cli("reverse-and-start", topic, "--link", back.name, "--reverse-link", again, "--yes")
    assert r.exit_code == 0, r.stderr
    again_m = Mirroring.for_link(mirroring, again, source=source, destination=destination)
    assert again_m.state(topic).state == st.ACTIVE
    again_m.start_worker()
    drills.produce_phase(source, topic, "on-src-again", 5, 2)
    again_m.wait_caught_up(topic)
    assert mt.log_end_offsets(destination, topic) == mt.log_end_offsets(source, topic)
