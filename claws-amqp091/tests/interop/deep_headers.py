#!/usr/bin/python3
"""Publishes, as a hostile peer would, a message whose headers nest DEPTH tables deep, then a
canary, to xmpp_direct with routing key TO. Usage: deep_headers.py URL TO DEPTH TAG"""
import sys

import pika

sys.setrecursionlimit(1_000_000)
url, to, depth, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
headers = {"leaf": 1}
for _ in range(depth):
    headers = {"n": headers}
ch = pika.BlockingConnection(pika.URLParameters(url)).channel()
ch.confirm_delivery()
ch.basic_publish("xmpp_direct", to, f"<message><body>poison {tag}</body></message>".encode(),
                 pika.BasicProperties(headers=headers), mandatory=True)
ch.basic_publish("xmpp_direct", to, f"<message><body>canary {tag}</body></message>".encode(),
                 pika.BasicProperties(), mandatory=True)
print("published", flush=True)
