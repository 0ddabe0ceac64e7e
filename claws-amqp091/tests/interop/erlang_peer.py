#!/usr/bin/python3
"""A peer that behaves on the wire as the Erlang claw does when deployed (docs/TOPOLOGY.md, "The
Erlang claw as deployed"): transient exchanges xmpp_direct (direct) and xmpp_fanout (fanout);
two transient queues per instance, direct:F and fanout:F, each bound with both F and B; sends
with routing key = destination and correlation_id = id, broadcasts with routing key = its own
JID; never reply_to; payload bytes unchanged.

Usage: erlang_peer.py URL JID [exclusive]
With "exclusive", its queues are exclusive (owned by its consuming connection) instead: RabbitMQ
4.3 refuses transient non-exclusive queues (541, transient_nonexcl_queues), so an Erlang claw on
4.3's defaults must declare them so (or the broker must permit the deprecated feature).
Reads commands on stdin, one per line:
  send TO ID XML        (ID "-" for none)
  publish XML
  quit
Writes one JSON object per line on stdout: {"ready": true} once consuming, then for every
delivery {"queue": ..., "routing_key": ..., "correlation_id": ..., "reply_to": ..., "payload": ...}
and {"sent": true} after each command.
"""
import json
import sys
import threading

import pika

url, jid = sys.argv[1], sys.argv[2]
exclusive = sys.argv[3:4] == ["exclusive"]
bare = jid.split("/")[0]
out_lock = threading.Lock()


def emit(obj):
    with out_lock:
        print(json.dumps(obj), flush=True)


def consume():
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    for exchange, kind in (("xmpp_direct", "direct"), ("xmpp_fanout", "fanout")):
        ch.exchange_declare(exchange, kind, durable=False)
    for prefix, exchange in (("direct", "xmpp_direct"), ("fanout", "xmpp_fanout")):
        queue = f"{prefix}:{jid}"
        ch.queue_declare(queue, durable=False, exclusive=exclusive)
        for key in (jid, bare):
            ch.queue_bind(queue, exchange, key)

        def on_message(ch, method, props, body, queue=queue):
            emit({"queue": queue, "routing_key": method.routing_key,
                  "correlation_id": props.correlation_id, "reply_to": props.reply_to,
                  "payload": body.decode("utf-8", "replace")})
            ch.basic_ack(method.delivery_tag)

        ch.basic_consume(queue, on_message)
    emit({"ready": True})
    try:
        ch.start_consuming()
    except Exception:
        pass


threading.Thread(target=consume, daemon=True).start()
pub = pika.BlockingConnection(pika.URLParameters(url)).channel()
for line in sys.stdin:
    words = line.rstrip("\n").split(" ", 3)
    if words[0] == "send":
        _, to, cid, xml = words
        props = pika.BasicProperties(correlation_id=None if cid == "-" else cid)
        pub.basic_publish("xmpp_direct", to, xml.encode(), props)
    elif words[0] == "publish":
        xml = line.rstrip("\n").split(" ", 1)[1]
        pub.basic_publish("xmpp_fanout", jid, xml.encode(), pika.BasicProperties())
    elif words[0] == "quit":
        break
    emit({"sent": True})
for prefix in ("direct", "fanout"):
    try:
        pub.queue_delete(f"{prefix}:{jid}")
    except Exception:
        pass
