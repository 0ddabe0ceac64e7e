#!/usr/bin/env python3
"""Round trips through the gateway, as an XMPP client sees them (scripts/bench-gateway).

Usage: burst_client.py JID PASSWORD HOST PORT TARGET ROUNDS BURST SPACED

Logs in (plain TCP on loopback), then ROUNDS times: sends BURST chat messages to TARGET at once
and waits for every echo; then sends SPACED messages 20 ms apart. Prints one JSON line per
message: {"kind": "burst"|"spaced", "round": R, "i": I, "rtt_ms": ...} (send to echo received,
monotonic clock), then exits 0; 1 on a timeout.
"""

import asyncio
import json
import sys
import time
import uuid

import slixmpp

TIMEOUT = 30


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password, target, rounds, burst, spaced):
        super().__init__(jid, password)
        self.target, self.rounds, self.burst, self.spaced = target, rounds, burst, spaced
        self.failure = "did not finish"
        self.done = asyncio.get_event_loop().create_future()
        self.pending = {}
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("failed_auth", lambda _: self.finish("authentication failed"))

    def finish(self, failure):
        self.failure = failure
        if not self.done.done():
            self.done.set_result(None)

    def on_message(self, msg):
        now = time.monotonic()
        entry = self.pending.pop(msg["body"], None)
        if entry is not None:
            sent, kind, rnd, i, fut = entry
            print(json.dumps({"kind": kind, "round": rnd, "i": i,
                              "rtt_ms": round((now - sent) * 1000, 3)}), flush=True)
            fut.set_result(None)

    def send_one(self, kind, rnd, i):
        body = f"{kind}-{rnd}-{i}-{uuid.uuid4()}"
        fut = asyncio.get_event_loop().create_future()
        self.pending[body] = (time.monotonic(), kind, rnd, i, fut)
        self.send_message(mto=self.target, mbody=body, mtype="chat")
        return fut

    async def on_start(self, _event):
        try:
            # One warm-up round trip (routes, channels).
            await asyncio.wait_for(self.send_one("warmup", 0, 0), TIMEOUT)
            for rnd in range(1, self.rounds + 1):
                futs = [self.send_one("burst", rnd, i) for i in range(self.burst)]
                await asyncio.wait_for(asyncio.gather(*futs), TIMEOUT)
                await asyncio.sleep(0.2)
            futs = []
            for i in range(self.spaced):
                futs.append(self.send_one("spaced", 0, i))
                await asyncio.sleep(0.02)
            await asyncio.wait_for(asyncio.gather(*futs), TIMEOUT)
            self.finish(None)
        except asyncio.TimeoutError:
            self.finish(f"no echo within {TIMEOUT} s ({len(self.pending)} missing)")
        except Exception as e:  # noqa: BLE001 - reported to the script
            self.finish(repr(e))


def main():
    jid, password, host, port, target = sys.argv[1:6]
    rounds, burst, spaced = (int(x) for x in sys.argv[6:9])
    client = Client(jid, password, target, rounds, burst, spaced)
    client.connect(address=(host, int(port)), force_starttls=False, disable_starttls=True)
    loop = asyncio.get_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(client.done, 600))
    except asyncio.TimeoutError:
        client.failure = "timed out"
    client.disconnect()
    try:
        loop.run_until_complete(asyncio.wait_for(client.disconnected, 5))
    except Exception:  # noqa: BLE001
        pass
    if client.failure:
        print(f"error: {client.failure}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
