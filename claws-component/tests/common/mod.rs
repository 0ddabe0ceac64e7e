//! A Prosody server configured and run by the test, in its own temporary directory, on loopback
//! ports only; and the slixmpp client script.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::process::{Child, Command};

/// A suffix unique to this process and call, for domains, JIDs and queues.
pub fn unique() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A running (or stopped) Prosody of the test's own.
pub struct Prosody {
    dir: tempfile::TempDir,
    config: PathBuf,
    pub c2s_port: u16,
    pub component_port: u16,
    /// The users' domain (a VirtualHost).
    pub host: String,
    /// The domain handed to the component.
    pub component_domain: String,
    pub secret: String,
    pub user: String,
    pub password: String,
    child: Option<Child>,
}

impl Prosody {
    /// Writes the config, creates the user, and starts Prosody.
    pub async fn start() -> Prosody {
        let dir = tempfile::tempdir().unwrap();
        let id = unique();
        let mut p = Prosody {
            config: dir.path().join("prosody.cfg.lua"),
            c2s_port: free_port(),
            component_port: free_port(),
            host: "localhost".into(),
            component_domain: format!("gw-{id}.localhost"),
            secret: format!("secret-{id}"),
            user: "alice".into(),
            password: format!("pw-{id}"),
            child: None,
            dir,
        };
        p.write_config();
        let out = Command::new("prosodyctl")
            .arg("--config")
            .arg(&p.config)
            .args(["register", &p.user, &p.host, &p.password])
            .output()
            .await
            .expect("prosodyctl must be installed (scripts/provision installs Debian's prosody)");
        assert!(
            out.status.success(),
            "prosodyctl register failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        p.launch().await;
        p
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_config(&self) {
        for sub in ["data", "certs"] {
            std::fs::create_dir_all(self.path(sub)).unwrap();
        }
        let d = |name: &str| self.path(name).display().to_string();
        let config = format!(
            r#"-- Written by claws-component's end-to-end tests.
run_as_root = true
pidfile = "{pid}"
data_path = "{data}"
certificates = "{certs}"
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = "{log}" }} }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
c2s_direct_tls_ports = {{ }}
legacy_ssl_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ {comp} }}
component_interfaces = {{ "127.0.0.1" }}
modules_enabled = {{ "roster", "saslauth", "disco", "ping", "posix" }}
modules_disabled = {{ "s2s", "tls", "http" }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
storage = "internal"
-- As the component's docs recommend: Nagle's algorithm off on Prosody's sockets, so that a
-- burst of stanzas is not held for the peer's delayed ACK (40 ms clumps).
network_settings = {{ nagle = false }}

VirtualHost "{host}"

Component "{component}"
    component_secret = "{secret}"
"#,
            pid = d("prosody.pid"),
            data = d("data"),
            certs = d("certs"),
            log = d("prosody.log"),
            c2s = self.c2s_port,
            comp = self.component_port,
            host = self.host,
            component = self.component_domain,
            secret = self.secret,
        );
        std::fs::write(&self.config, config).unwrap();
    }

    /// Starts Prosody and waits (bounded) until both ports accept connections.
    pub async fn launch(&mut self) {
        assert!(self.child.is_none(), "Prosody is already running");
        let out = std::fs::File::create(self.path("stdout.txt")).unwrap();
        let child = Command::new("prosody")
            .arg("--config")
            .arg(&self.config)
            .arg("-F")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("prosody must be installed (scripts/provision installs Debian's prosody)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [self.c2s_port, self.component_port] {
            loop {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    break;
                }
                if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!("Prosody exited ({status}) at start:\n{}", self.logs());
                }
                assert!(
                    Instant::now() < deadline,
                    "Prosody did not listen on {port} within 20 s:\n{}",
                    self.logs()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Stops Prosody with SIGTERM (SIGKILL after 10 s) and waits for it to exit.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }

    pub fn component_addr(&self) -> String {
        format!("127.0.0.1:{}", self.component_port)
    }

    pub fn user_jid(&self) -> String {
        format!("{}@{}", self.user, self.host)
    }

    /// Prosody's log and output, for failure messages.
    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.path(name)).unwrap_or_default();
        format!(
            "--- prosody.log\n{}\n--- stdout\n{}",
            read("prosody.log"),
            read("stdout.txt")
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// The Python with slixmpp: `CLAWS_PYTHON`, else Debian's `/usr/bin/python3`.
fn python() -> String {
    std::env::var("CLAWS_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}

/// Runs the slixmpp client as the Prosody user against `target`; returns its stdout, or panics
/// with its output and Prosody's log.
pub async fn xmpp_client(prosody: &Prosody, target: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/xmpp_client.py");
    let run = Command::new(python())
        .arg(script)
        .args([
            &prosody.user_jid(),
            &prosody.password,
            "127.0.0.1",
            &prosody.c2s_port.to_string(),
            target,
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the XMPP client finishes within 60 s")
        .expect(
            "python3 with slixmpp must be installed (scripts/provision installs python3-slixmpp)",
        );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the XMPP client failed ({}):\n{stdout}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        prosody.logs()
    );
    stdout
}
