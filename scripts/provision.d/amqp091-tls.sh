# claws-amqp091's TLS tests: a test CA, a server certificate for 127.0.0.1 and a client certificate,
# and a RabbitMQ TLS listener on 127.0.0.1:5671 that uses them (the plain listener on 5672 stays),
# with the EXTERNAL mechanism (rabbitmq_auth_mechanism_ssl) mapping the client certificate's CN to
# the user `claws-test-client`.
# The listener is configured in /etc/rabbitmq/conf.d/, so it survives broker restarts; RabbitMQ is
# restarted once, only when that file is new or changed.
# Sourced by scripts/provision (uses its `log` and `apt_install`).
apt_install openssl ca-certificates
tls_dir=/etc/rabbitmq/claws-tls
tls_files="ca.pem server.pem server-key.pem client.pem client-key.pem"
tls_missing=""
for f in $tls_files; do [ -s "$tls_dir/$f" ] || tls_missing=1; done
if [ -n "$tls_missing" ]; then
  log "generating the test CA and certificates in $tls_dir"
  tls_tmp=$(mktemp -d)
  (
    cd "$tls_tmp"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj "/CN=claws test CA" -keyout ca-key.pem -out ca.pem 2>openssl.log || exit 1
    for who in server client; do
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=claws-test-$who" -keyout "$who-key.pem" -out "$who.csr" 2>>openssl.log || exit 1
    done
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    for who in server client; do
      openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 3650 \
        -extfile "$who.ext" -out "$who.pem" 2>>openssl.log || exit 1
    done
  ) || { cat "$tls_tmp/openssl.log" >&2; echo "error: generating the test certificates failed" >&2; exit 1; }
  mkdir -p "$tls_dir"
  for f in $tls_files; do cp "$tls_tmp/$f" "$tls_dir/$f"; done
  # The CA key is not kept: with certificate logins, whoever holds it could log in as anyone.
  rm -rf "$tls_tmp"
  chown -R rabbitmq:rabbitmq "$tls_dir"
  chmod 0644 "$tls_dir"/*.pem
  chmod 0600 "$tls_dir"/server-key.pem "$tls_dir"/client-key.pem
fi
rm -f "$tls_dir/ca-key.pem" # kept by an earlier version of this script
chmod 0600 "$tls_dir"/server-key.pem "$tls_dir"/client-key.pem
tls_conf=/etc/rabbitmq/conf.d/20-claws-tls.conf
tls_wanted="# Written by claws' scripts/provision.d/amqp091-tls.sh: a TLS listener for claws' tests.
listeners.ssl.claws = 127.0.0.1:5671
ssl_options.cacertfile = $tls_dir/ca.pem
ssl_options.certfile = $tls_dir/server.pem
ssl_options.keyfile = $tls_dir/server-key.pem
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL
ssl_cert_login_from = common_name"
if ! rabbitmq-plugins -q list -e 2>/dev/null | grep -q 'rabbitmq_auth_mechanism_ssl'; then
  log "enabling rabbitmq_auth_mechanism_ssl"
  rabbitmq-plugins -q enable rabbitmq_auth_mechanism_ssl >/dev/null
fi
if [ "$(cat "$tls_conf" 2>/dev/null)" != "$tls_wanted" ]; then
  log "configuring RabbitMQ's TLS listener ($tls_conf) and restarting RabbitMQ"
  mkdir -p "$(dirname "$tls_conf")"
  printf '%s\n' "$tls_wanted" >"$tls_conf"
  rabbitmqctl -q stop >/dev/null 2>&1 || true
  # `stop` does not wait for the Erlang VM to exit; starting before it has would find the node
  # name taken and fail silently (detached).
  for _ in $(seq 60); do pgrep -u rabbitmq -f beam.smp >/dev/null || break; sleep 1; done
  if pgrep -u rabbitmq -f beam.smp >/dev/null; then
    echo "error: RabbitMQ did not stop within 60 s for the TLS configuration to take effect" >&2
    exit 1
  fi
  rabbitmq-server -detached
  await_rabbitmq "come back after enabling TLS"
fi
# The user the client certificate logs in as (EXTERNAL): no password, rights on the default vhost.
# (the list read whole first: `grep -q` leaving a pipe early fails it under pipefail)
users=$(rabbitmqctl -q list_users 2>/dev/null || true)
if ! grep -q '^claws-test-client' <<<"$users"; then
  log "adding the RabbitMQ user claws-test-client (certificate login only)"
  rabbitmqctl -q add_user claws-test-client "$(openssl rand -hex 16)" >/dev/null
  rabbitmqctl -q clear_password claws-test-client >/dev/null
  rabbitmqctl -q set_permissions -p / claws-test-client '.*' '.*' '.*' >/dev/null
fi
# stop_app/start_app (the broker-restart tests) keep the listener; check it answers TLS.
if ! timeout 10 openssl s_client -connect 127.0.0.1:5671 -CAfile "$tls_dir/ca.pem" \
  -verify_return_error </dev/null >/dev/null 2>&1; then
  echo "error: RabbitMQ's TLS listener on 127.0.0.1:5671 does not answer; see /var/log/rabbitmq/ and $tls_conf" >&2
  exit 1
fi
log "RabbitMQ TLS listener ready at 127.0.0.1:5671 (CA $tls_dir/ca.pem)"
