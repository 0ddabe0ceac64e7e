# claws-amqp10: RabbitMQ's AMQP 1.0 plugin, Python qpid-proton (interop test), and the Qpid Proton
# C example broker (queue address scheme tests), built idempotently into /tmp/claws-proton-broker.
# Sourced by scripts/provision (uses its `log` and `apt_install`).
if ! rabbitmq-plugins -q list -e 2>/dev/null | grep -q 'rabbitmq_amqp1_0'; then
  log "enabling rabbitmq_amqp1_0"
  rabbitmq-plugins -q enable rabbitmq_amqp1_0 >/dev/null
fi
apt_install python3-qpid-proton libqpid-proton11-dev libqpid-proton11-dev-examples gcc
proton_src=$(dpkg -L libqpid-proton11-dev-examples | grep '/examples/c/broker\.c$' | head -n1)
if [ -z "$proton_src" ]; then
  echo "error: broker.c not found in libqpid-proton11-dev-examples" >&2
  exit 1
fi
proton_dir=${CLAWS_PROTON_DIR:-/tmp/claws-proton-broker}
if [ ! -x "$proton_dir/broker" ] || [ "$proton_src" -nt "$proton_dir/broker" ]; then
  log "building the Qpid Proton example broker into $proton_dir"
  mkdir -p "$proton_dir"
  gcc -O1 -o "$proton_dir/broker" "$proton_src" -I"$(dirname "$proton_src")" -lqpid-proton -lpthread
fi
log "Proton example broker at $proton_dir/broker"
