#!/usr/bin/python3
"""Publishes to xmpp_direct with routing key TO, as the URL's user, claiming user_id CLAIM
("-" for none). Prints "published", or "refused CODE TEXT" when the broker refuses it.
Usage: user_id.py URL TO CLAIM TAG"""
import sys

import pika

url, to, claim, tag = sys.argv[1:5]
ch = pika.BlockingConnection(pika.URLParameters(url)).channel()
ch.confirm_delivery()
props = pika.BasicProperties(user_id=None if claim == "-" else claim)
try:
    ch.basic_publish("xmpp_direct", to, f"<message><body>claims {claim} {tag}</body></message>".encode(),
                     props, mandatory=True)
    print("published", flush=True)
except pika.exceptions.ChannelClosedByBroker as e:
    print(f"refused {e.reply_code} {e.reply_text}", flush=True)
