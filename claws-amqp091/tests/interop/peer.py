"""A foreign peer written from TOPOLOGY.md alone, with pika: it sends to a claws instance's full
and bare JIDs, broadcasts, and prints what the instance sends it.

usage: peer.py URL UID CLAW_FULL_JID
Prints `SENT` once its three stanzas are confirmed, then one line per stanza received:
MSG <tab> queue <tab> exchange <tab> routing_key <tab> correlation_id <tab> reply_to <tab> body
and exits 0 after two stanzas from others containing UID (exit 1 after 30 s without them).
"""
import sys
import time

import pika

url, uid, claw_jid = sys.argv[1:4]
me = f"py-{uid}@test/p"
bare = claw_jid.split("/")[0]

conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
# Every instance declares the two exchanges; the claw has, so a passive check suffices here.
ch.exchange_declare("xmpp_direct", passive=True)
ch.exchange_declare("xmpp_fanout", passive=True)
# This peer's own queues: xmpp_direct:F bound with F, xmpp_fanout:F bound to the fanout exchange.
own_direct = f"xmpp_direct:{me}"
own_fanout = f"xmpp_fanout:{me}"
for queue, exchange in ((own_direct, "xmpp_direct"), (own_fanout, "xmpp_fanout")):
    ch.queue_declare(queue, auto_delete=True, exclusive=True)
    ch.queue_bind(queue, exchange, routing_key=me)

ch.confirm_delivery()


def send(exchange, key, body, correlation_id=None):
    props = pika.BasicProperties(correlation_id=correlation_id, reply_to=me, delivery_mode=2)
    ch.basic_publish(exchange, key, body.encode(), props, mandatory=True)


send("xmpp_direct", claw_jid, f"<message>full {uid}</message>", "py-1")
send("xmpp_direct", bare, f"<message>bare {uid}</message>", "py-2")
send("xmpp_fanout", me, f"<presence>all {uid}</presence>")
print("SENT", flush=True)

got = 0


def on_message(channel, method, props, body):
    global got
    text = body.decode("utf-8", "replace")
    # Our own broadcast comes back to our fanout queue too: skip it.
    if uid in text and props.reply_to != me:
        got += 1
        fields = [
            channel_queue.get(method.consumer_tag, ""),
            method.exchange,
            method.routing_key,
            props.correlation_id or "",
            props.reply_to or "",
            text,
        ]
        print("MSG\t" + "\t".join(fields), flush=True)
    channel.basic_ack(method.delivery_tag)


channel_queue = {}
for queue in (own_direct, own_fanout):
    tag = ch.basic_consume(queue, on_message)
    channel_queue[tag] = queue

deadline = time.monotonic() + 30
while got < 2 and time.monotonic() < deadline:
    conn.process_data_events(time_limit=0.5)
conn.close()
sys.exit(0 if got >= 2 else 1)
