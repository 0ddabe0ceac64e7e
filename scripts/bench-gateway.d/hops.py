#!/usr/bin/env python3
"""Per-hop timestamps of the gateway benchmark's messages, from a loopback capture.

Usage: hops.py PCAP C2S_PORT COMPONENT_PORT AMQP_PORT [KIND]

Reads a tcpdump capture of the loopback interface (scripts/bench-gateway with PCAP=...), finds
each benchmark message body (`burst-R-I-uuid`, `spaced-...`) in the reassembled byte streams and
takes the time of the segment that completes it. A message is written eight times on its way:

  c2s>    client -> Prosody            comp>   Prosody -> gateway (component stream)
  pub1    gateway -> RabbitMQ          dlv1    RabbitMQ -> echo worker
  pub2    worker -> RabbitMQ (echo)    dlv2    RabbitMQ -> gateway
  comp<   gateway -> Prosody           c2s<    Prosody -> client

For each burst it prints, per hop, the time since the burst's first byte left the client (ms):
the first message to reach the hop, the median, the last; and the median time each message spent
in each hop. Nothing here is a claws API: it reads what went over the wire.
"""

import re
import statistics
import struct
import sys
from collections import defaultdict

BODY = re.compile(rb"((?:burst|spaced)-\d+-\d+-[0-9a-f-]{36})")
HOPS = ["c2s>", "comp>", "pub1", "dlv1", "pub2", "dlv2", "comp<", "c2s<"]


def segments(path):
    """Yields (time, src, sport, dst, dport, payload) for each TCP segment with data."""
    with open(path, "rb") as f:
        magic = f.read(24)
        if len(magic) < 24:
            return
        (m,) = struct.unpack("<I", magic[:4])
        endian = "<" if m in (0xA1B2C3D4, 0xA1B23C4D) else ">"
        nano = m in (0xA1B23C4D, 0x4D3CB2A1)
        linktype = struct.unpack(endian + "I", magic[20:24])[0]
        while True:
            hdr = f.read(16)
            if len(hdr) < 16:
                return
            sec, frac, incl, _ = struct.unpack(endian + "IIII", hdr)
            data = f.read(incl)
            t = sec + frac / (1e9 if nano else 1e6)
            if linktype == 1:  # Ethernet (loopback on Linux)
                if data[12:14] != b"\x08\x00":
                    continue
                ip = data[14:]
            elif linktype == 113:  # Linux cooked
                ip = data[16:]
            else:
                ip = data
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
                continue
            ihl = (ip[0] & 15) * 4
            total = struct.unpack(">H", ip[2:4])[0]
            tcp = ip[ihl:total]
            sport, dport = struct.unpack(">HH", tcp[:4])
            off = (tcp[12] >> 4) * 4
            payload = tcp[off:]
            if payload:
                yield t, ip[12:16], sport, ip[16:20], dport, payload


def occurrences(path):
    """Maps (sport, dport) -> [(time, body)] in stream order."""
    streams = defaultdict(lambda: [b"", []])  # buffer tail, found
    for t, _s, sport, _d, dport, payload in segments(path):
        st = streams[(sport, dport)]
        buf = st[0] + payload
        cut = 0
        for m in BODY.finditer(buf):
            st[1].append((t, m.group(1).decode()))
            cut = m.end()
        # Keep a tail long enough to hold a body split across segments.
        st[0] = buf[max(cut, len(buf) - 80):]
    return {k: v[1] for k, v in streams.items()}


def main():
    path, c2s, comp, amqp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    kind = sys.argv[5] if len(sys.argv) > 5 else "burst"
    per_body = defaultdict(dict)
    amqp_events = defaultdict(list)
    for (sport, dport), found in occurrences(path).items():
        for t, body in found:
            if dport == c2s:
                hop = "c2s>"
            elif sport == c2s:
                hop = "c2s<"
            elif dport == comp:
                hop = "comp<"
            elif sport == comp:
                hop = "comp>"
            elif dport == amqp:
                amqp_events[body].append((t, "pub"))
                continue
            elif sport == amqp:
                amqp_events[body].append((t, "dlv"))
                continue
            else:
                continue
            per_body[body].setdefault(hop, t)
    for body, events in amqp_events.items():
        pubs = sorted(t for t, e in events if e == "pub")
        dlvs = sorted(t for t, e in events if e == "dlv")
        for name, ts in (("pub1", pubs[:1]), ("pub2", pubs[1:2]), ("dlv1", dlvs[:1]), ("dlv2", dlvs[1:2])):
            if ts:
                per_body[body][name] = ts[0]

    rounds = defaultdict(list)
    for body, hops in per_body.items():
        k, rnd, i = body.split("-")[:3]
        if k == kind and all(h in hops for h in HOPS):
            rounds[int(rnd)].append((int(i), hops))
    spent = defaultdict(list)
    print(f"{kind}: ms since the burst's first message left the client (first / median / last to reach each hop)")
    for rnd in sorted(rounds):
        msgs = sorted(rounds[rnd])
        t0 = min(h["c2s>"] for _, h in msgs)
        cells = []
        for hop in HOPS:
            ts = sorted((h[hop] - t0) * 1000 for _, h in msgs)
            cells.append(f"{hop} {ts[0]:5.1f}/{statistics.median(ts):5.1f}/{ts[-1]:5.1f}")
        print(f"round {rnd:3d} n={len(msgs):3d}  " + "  ".join(cells))
        for _, h in msgs:
            for a, b in zip(HOPS, HOPS[1:]):
                spent[f"{a} -> {b}"].append((h[b] - h[a]) * 1000)
            spent["total"].append((h["c2s<"] - h["c2s>"]) * 1000)
    print("time per message in each hop, ms: min / median / p90 / max")
    for name, v in spent.items():
        v.sort()
        print(f"  {name:16s} {v[0]:6.2f} / {statistics.median(v):6.2f} / {v[int(len(v) * 0.9)]:6.2f} / {v[-1]:6.2f}")


if __name__ == "__main__":
    main()
