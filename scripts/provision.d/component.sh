# Sourced by scripts/provision (apt_install and log come from there).
# The component claw's end-to-end tests run their own Prosody (Debian's package; each test writes
# its own config in a temp dir and starts/stops it) and a real XMPP client written with slixmpp,
# run by Debian's /usr/bin/python3.
apt_install prosody python3-slixmpp
if ! /usr/bin/python3 -c 'import slixmpp' >/dev/null 2>&1; then
  echo "error: /usr/bin/python3 cannot import slixmpp after installing python3-slixmpp" >&2
  exit 1
fi
# The package may start a system-wide Prosody; the tests need none (they use their own ports).
if command -v prosodyctl >/dev/null 2>&1 && prosodyctl status >/dev/null 2>&1; then
  log "stopping the system Prosody (the tests run their own)"
  prosodyctl stop >/dev/null 2>&1 || true
fi
log "Prosody $(dpkg-query -W -f='${Version}' prosody) and slixmpp ready"
