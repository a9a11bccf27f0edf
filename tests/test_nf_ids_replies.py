"""The IDS reads both directions: a signature in a server's reply alerts
(`uid=0(root)`: GPL ATTACK_RESPONSE id check returned root) and a drop
rule drops the reply; each direction of a TCP flow keeps its own
reassembly tail, so bytes of one never complete a signature with the
other's."""
import json

from test_nf_helpers import harness, tcp

C, S = "192.0.2.7", "10.0.1.5"
ID_ROOT = ('{action} ip any any -> any any (msg:"GPL ATTACK_RESPONSE id check returned root"; '
           'content:"uid=0|28|root|29|"; classtype:bad-unknown; sid:2100498; rev:8;)\n')
REPLY = b"uid=0(root) gid=0(root) groups=0(root)\n"


def ids(tmp_path, action):
    alerts = tmp_path / f"{action}.jsonl"
    return harness([("ids", {"rules_text": ID_ROOT.format(action=action), "alerts": str(alerts)})]), alerts


def request_and_reply(h, reply=REPLY):
    """A client's `id` over a shell on port 23 and the server's answer:
    what came out of each."""
    asked = h.send([tcp(C, S, 40000, 23, "PA", b"id\n", seq=100, ack=900)])
    answered = h.send([tcp(S, C, 23, 40000, "PA", reply, seq=900, ack=103)])
    return asked, answered


def test_reply_with_root_id_alerts(tmp_path):
    made, alerts = ids(tmp_path, "alert")
    with made as h:
        asked, answered = request_and_reply(h)
        assert len(asked) == 1 and len(answered) == 1
        c = h.nf(1).counters()
        assert c["alerts"] == 1 and c["dropped"] == 0 and c["rules"][0]["hits"] == 1
    (alert,) = [json.loads(line) for line in alerts.read_text().splitlines()]
    assert (alert["alert"]["signature_id"], alert["src_ip"], alert["src_port"], alert["dest_ip"],
            alert["dest_port"]) == (2100498, S, 23, C, 40000)
    assert alert["alert"]["signature"] == "GPL ATTACK_RESPONSE id check returned root"
    assert (alert["alert"]["category"], alert["alert"]["rev"]) == ("bad-unknown", 8)


def test_drop_rule_drops_the_reply(tmp_path):
    made, _ = ids(tmp_path, "drop")
    with made as h:
        asked, answered = request_and_reply(h)
        assert len(asked) == 1 and answered == []
        assert h.nf(1).counters()["dropped"] == 1
        # The stream stays where the dropped segment was: what follows it
        # is ahead of a gap and dropped too, and the dropped segment sent
        # again is scanned again, never passed as already seen.
        after = h.send([tcp(S, C, 23, 40000, "PA", b"uid=1000(alice)\n", seq=900 + len(REPLY))])
        again = h.send([tcp(S, C, 23, 40000, "PA", REPLY, seq=900)])
        assert after == [] and again == []
        c = h.nf(1).counters()
        assert c["out_of_order"] == 1 and c["rules"][0]["hits"] == 2
        # The other direction is a stream of its own: it goes on.
        assert len(h.send([tcp(C, S, 40000, 23, "PA", b"ls\n", seq=103)])) == 1


def test_reply_signature_split_across_two_reply_segments(tmp_path):
    made, _ = ids(tmp_path, "drop")
    with made as h:
        h.send([tcp(C, S, 40000, 23, "PA", b"id\n", seq=100)])
        first = h.send([tcp(S, C, 23, 40000, "PA", b"output: uid=0(", seq=900)])
        second = h.send([tcp(S, C, 23, 40000, "PA", b"root) gid=0", seq=914)])
        assert len(first) == 1 and second == []
        assert h.nf(1).counters()["reassembled"] == 1


def test_the_two_directions_never_share_a_tail(tmp_path):
    made, _ = ids(tmp_path, "drop")
    with made as h:
        # The client's segment ends with the signature's start, and the
        # server's next segment, at the very sequence number the client's
        # would continue with, holds its end: one direction each, no match.
        out = h.send([tcp(C, S, 40000, 23, "PA", b"echo uid=0(", seq=100),
                      tcp(S, C, 23, 40000, "PA", b"root)", seq=111)])
        assert len(out) == 2
        c = h.nf(1).counters()
        assert c["alerts"] == 0 and c["reassembled"] == 0 and c["flows"] == 2
        # Each direction still continues its own stream.
        assert h.send([tcp(C, S, 40000, 23, "PA", b"root)", seq=111)]) == []
        assert h.nf(1).counters()["reassembled"] == 1
