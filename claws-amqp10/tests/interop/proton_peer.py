"""An independent AMQP 1.0 peer (Python qpid-proton) following TOPOLOGY.md alone.

Usage: proton_peer.py URL CLAW_JID PEER_JID PEER_QUEUE TOKEN

Sends three stanzas to a claws instance on RabbitMQ (to its full JID, to its bare JID, and a
broadcast), each with a correlation id and reply-to naming PEER_JID, then receives one stanza the
instance sends back on PEER_QUEUE (declared and bound by the caller) and prints it as JSON.
"""
import json
import sys

from proton import Message
from proton.utils import BlockingConnection


def escape(s):
    return s.replace("%", "%25").replace("/", "%2F")


def main():
    url, claw_jid, peer_jid, peer_queue, token = sys.argv[1:6]
    bare = claw_jid.split("/", 1)[0]
    conn = BlockingConnection(url, timeout=15)
    receiver = conn.create_receiver("/amq/queue/" + escape(peer_queue), credit=10)
    sends = [
        ("/exchange/xmpp_direct/" + escape(claw_jid), "full"),
        ("/exchange/xmpp_direct/" + escape(bare), "bare"),
        ("/exchange/xmpp_fanout/" + escape(peer_jid), "broadcast"),
    ]
    for address, kind in sends:
        sender = conn.create_sender(address)
        body = ("<message>%s-%s</message>" % (token, kind)).encode()
        # bytes body -> a data section, as claws expects
        sender.send(Message(body=body, correlation_id="py-" + kind, reply_to="/queue/" + peer_jid, durable=True))
        # no sender.close(): RabbitMQ 3.10 never answers a closing detach
    print("SENT", flush=True)
    m = receiver.receive(timeout=15)
    receiver.accept()
    body = m.body if isinstance(m.body, (bytes, bytearray)) else str(m.body).encode()
    print(json.dumps({
        "body": body.decode(),
        "correlation_id": m.correlation_id,
        "reply_to": m.reply_to,
        "subject": m.subject,
    }), flush=True)
    conn.close()


if __name__ == "__main__":
    main()
