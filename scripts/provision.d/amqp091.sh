# claws-amqp091's interoperability test talks to a claw from Python with pika.
# Sourced by scripts/provision (which defines apt_install and log).
apt_install python3 python3-pika
/usr/bin/python3 -c 'import pika' || { echo "error: python3-pika is not importable" >&2; exit 1; }
log "python3-pika ready"
