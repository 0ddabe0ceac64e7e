#!/usr/bin/env python3
"""A real XMPP client for the gateway's end-to-end tests (slixmpp).

Usage: xmpp_client.py JID PASSWORD HOST PORT TARGET

Logs in (plain TCP on loopback), sends a chat message and an XEP-0199 ping to TARGET, and waits
for both replies. Prints `message-reply FROM BODY` and `ping-reply FROM`; exits 0 when both
came back as expected, 1 otherwise (with the reason on stderr).
"""

import asyncio
import sys
import uuid

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout

TIMEOUT = 15


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password, target):
        super().__init__(jid, password)
        self.target = target
        self.failure = "did not finish"
        self.done = asyncio.get_event_loop().create_future()
        self.replies = asyncio.Queue()
        self.register_plugin("xep_0199")
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("failed_auth", lambda _: self.finish("authentication failed"))
        self.add_event_handler("connection_failed", lambda e: self.finish(f"connection failed: {e}"))

    def finish(self, failure):
        self.failure = failure
        if not self.done.done():
            self.done.set_result(None)

    def on_message(self, msg):
        self.replies.put_nowait(msg)

    async def on_start(self, _event):
        try:
            body = f"hello {uuid.uuid4()}"
            self.send_message(mto=self.target, mbody=body, mtype="chat")
            reply = await asyncio.wait_for(self.replies.get(), TIMEOUT)
            if reply["type"] == "error":
                raise RuntimeError(f"error reply to the message: {reply}")
            if reply["body"] != body or reply["from"].bare != slixmpp.JID(self.target).bare:
                raise RuntimeError(f"unexpected reply to the message: {reply}")
            print(f"message-reply {reply['from']} {reply['body']}", flush=True)
            await self["xep_0199"].ping(jid=self.target, timeout=TIMEOUT)
            print(f"ping-reply {self.target}", flush=True)
            self.finish(None)
        except (IqError, IqTimeout) as e:
            self.finish(f"ping failed: {e!r}")
        except asyncio.TimeoutError:
            self.finish(f"no reply to the message within {TIMEOUT} s")
        except Exception as e:  # noqa: BLE001 - report anything, the test reads it
            self.finish(repr(e))


def main():
    jid, password, host, port, target = sys.argv[1:6]
    client = Client(jid, password, target)
    client.connect(address=(host, int(port)), force_starttls=False, disable_starttls=True)
    loop = asyncio.get_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(client.done, 3 * TIMEOUT))
    except asyncio.TimeoutError:
        client.failure = "timed out"
    client.disconnect()
    try:
        loop.run_until_complete(asyncio.wait_for(client.disconnected, 5))
    except Exception:  # noqa: BLE001 - the verdict is already known
        pass
    if client.failure:
        print(f"error: {client.failure}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
