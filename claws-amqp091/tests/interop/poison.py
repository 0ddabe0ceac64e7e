#!/usr/bin/python3
"""Messages the 0-9-1 client library cannot decode, as a hostile peer would publish them.

poison.py publish URL TO KIND TAG: publishes a message with a property or header key that is
  not UTF-8 (KIND one of correlation_id, reply_to, header_key, or for AMQP 1.0
  consumers amqp10_properties, amqp10_type), then a canary, to xmpp_direct
  with routing key TO.
poison.py find URL QUEUE TAG: takes the message containing `poison TAG` from QUEUE (the others
  go back), prints its x-death reason and exits 0; exits 1 if it is not there."""
import sys

import pika

mode, url = sys.argv[1], sys.argv[2]
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
if mode == "publish":
    to, kind, tag = sys.argv[3:6]
    bad = b"\xff\xfe bad \xc3"
    props = {
        "correlation_id": pika.BasicProperties(correlation_id=bad),
        "reply_to": pika.BasicProperties(reply_to=bad),
        "header_key": pika.BasicProperties(headers={bad: 1}),
        # RabbitMQ 3.x hands these to an AMQP 1.0 consumer as the message's own sections.
        "amqp10_properties": pika.BasicProperties(headers={"x-amqp-1.0-properties": b"\x00\x53\x73\xc0\xff\xff" + bad}),
        "amqp10_type": pika.BasicProperties(type="amqp-1.0", headers={"x-amqp-1.0-properties": bad}),
    }[kind]
    ch.confirm_delivery()
    ch.basic_publish("xmpp_direct", to, f"<message><body>poison {tag}</body></message>".encode(),
                     props, mandatory=True)
    ch.basic_publish("xmpp_direct", to, f"<message><body>canary {tag}</body></message>".encode(),
                     pika.BasicProperties(), mandatory=True)
    print("published", flush=True)
elif mode == "find":
    queue, tag = sys.argv[3:5]
    needle = f"poison {tag}".encode()
    for _ in range(100_000):
        method, props, body = ch.basic_get(queue)
        if method is None:
            break
        if needle in body:
            ch.basic_ack(method.delivery_tag)
            deaths = (props.headers or {}).get("x-death") or [{}]
            print(deaths[0].get("reason", "none"), flush=True)
            conn.close()
            sys.exit(0)
    conn.close()  # the others go back to the queue
    sys.exit(1)
