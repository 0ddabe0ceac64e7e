//! The `claws` binary run as processes: on the mem transport, and against the real RabbitMQ at
//! 127.0.0.1:5672 (guest/guest; `TEST_RABBITMQ=4`: the RabbitMQ 4 node) with `listen` in one process and `send`/`publish` in others.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const CLAWS: &str = env!("CARGO_BIN_EXE_claws");

/// How long any one process or line may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);

fn claws(args: &[&str]) -> Output {
    Command::new(CLAWS)
        .args(args)
        .env_remove("CLAWS_URL")
        .env_remove("CLAWS_JID")
        .env_remove("CLAWS_TRANSPORT")
        .stdin(Stdio::null())
        .output()
        .expect("run the claws binary")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

/// A unique suffix for JIDs, so tests never share queues.
fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[test]
fn demo_on_mem_shows_direct_load_balanced_and_broadcast_delivery() {
    let out = claws(&["demo"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for needle in [
        "Direct",
        "Load-balanced",
        "Broadcast",
        "queue=direct ",
        "queue=group_direct ",
        "queue=fanout ",
        "queue=group_fanout ",
        "exchange=xmpp_direct",
        "exchange=xmpp_fanout",
        "<iq type=\"result\" id=\"p1\"",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }

    let out = claws(&["demo", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&stdout(&out));
    let received: Vec<&Value> = lines.iter().filter(|l| l["event"] == "received").collect();
    // 1 direct, 2 for the ping and its answer, 6 load-balanced, 7 broadcast copies.
    assert_eq!(received.len(), 16, "{lines:?}");
    let count = |q: &str| received.iter().filter(|l| l["via"]["queue"] == q).count();
    assert_eq!(count("direct"), 3);
    assert_eq!(count("group_direct"), 6);
    assert_eq!(count("fanout"), 4);
    assert_eq!(count("group_fanout"), 3);
    let lb: Vec<_> = received
        .iter()
        .filter(|l| l["via"]["queue"] == "group_direct")
        .collect();
    assert!(lb
        .iter()
        .all(|l| l["instance"] == "w1" || l["instance"] == "w2"));
    assert!(lb.iter().all(|l| l["via"]["jid"] == "svc@demo.claws"));
    let mut ids: Vec<_> = lb
        .iter()
        .map(|l| l["via"]["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["lb1", "lb2", "lb3", "lb4", "lb5", "lb6"],
        "each exactly once"
    );
    assert_eq!(lines.last().unwrap()["event"], "done");
}

#[test]
fn usage_and_configuration_errors_exit_2() {
    let out = claws(&["send", "<message/>"]); // --to is missing
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = claws(&["--transport", "kafka", "demo"]);
    assert_eq!(out.status.code(), Some(2));
    let out = claws(&["--jid", "a@b@c", "listen"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("invalid JID `a@b@c`"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    let out = claws(&["--config", "/nonexistent/claws.toml", "demo"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("does not exist"));
    let out = claws(&["bench", "--transport", "mem", "--baseline"]);
    assert_eq!(out.status.code(), Some(2));
    let out = claws(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    for sub in [
        "listen", "send", "publish", "echo", "demo", "bench", "test", "topology",
    ] {
        let out = claws(&[sub, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{sub} --help");
        assert!(
            stdout(&out).contains("--transport"),
            "{sub} --help shows the global options"
        );
    }
}

#[test]
fn listen_on_mem_prints_connected_then_times_out_with_exit_1() {
    let jid = format!("listener-{}@test.claws/l", unique());
    let started = Instant::now();
    let out = claws(&[
        "--jid",
        &jid,
        "--format",
        "json",
        "listen",
        "--count",
        "1",
        "--timeout",
        "0.3",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(started.elapsed() < WAIT);
    let lines = json_lines(&stdout(&out));
    assert_eq!(
        lines,
        [serde_json::json!({"event": "connected", "claw": "mem"})]
    );
    assert!(stderr(&out).contains("timed out"));
}

#[test]
fn topology_prints_the_wire_contract() {
    let jid = format!("topo-{}@test.claws/r1", unique());
    let out = claws(&["--jid", &jid, "--format", "json", "topology"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&stdout(&out));
    let bare = jid.trim_end_matches("/r1");
    let queues: Vec<_> = lines
        .iter()
        .filter(|l| l["kind"] == "queue")
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        queues,
        [
            format!("xmpp_direct:{jid}"),
            format!("xmpp_direct:{bare}"),
            format!("xmpp_fanout:{jid}"),
            format!("xmpp_fanout:{bare}"),
        ]
    );
    let exchanges: Vec<_> = lines
        .iter()
        .filter(|l| l["kind"] == "exchange")
        .map(|l| (l["name"].clone(), l["type"].clone()))
        .collect();
    assert!(exchanges.contains(&("xmpp_direct".into(), "direct".into())));
    assert!(exchanges.contains(&("xmpp_fanout".into(), "fanout".into())));
    let bindings = lines.iter().filter(|l| l["kind"] == "binding").count();
    assert_eq!(bindings, 4);
}

/// The direct queue `claws topology` prints, which names the JID the config ended up with.
fn direct_queue(out: &Output) -> String {
    assert!(out.status.success(), "{}", stderr(out));
    let lines = json_lines(&stdout(out));
    let q = lines
        .iter()
        .find(|l| l["subscription"] == "direct")
        .expect("a direct queue");
    q["name"].as_str().unwrap().to_owned()
}

#[test]
fn flags_override_environment_which_overrides_the_file() {
    let file = std::env::temp_dir().join(format!("claws-cli-precedence-{}.toml", unique()));
    std::fs::write(&file, "jid = \"file@test.claws/f\"\n").unwrap();
    let file = file.to_str().unwrap().to_owned();
    let run = |env: Option<&str>, flag: Option<&str>| {
        let mut cmd = Command::new(CLAWS);
        cmd.args(["--config", &file, "--format", "json", "topology"])
            .env_remove("CLAWS_JID");
        if let Some(jid) = env {
            cmd.env("CLAWS_JID", jid);
        }
        if let Some(jid) = flag {
            cmd.args(["--jid", jid]);
        }
        direct_queue(&cmd.output().expect("run claws"))
    };
    assert_eq!(run(None, None), "xmpp_direct:file@test.claws/f");
    assert_eq!(
        run(Some("env@test.claws/e"), None),
        "xmpp_direct:env@test.claws/e"
    );
    assert_eq!(
        run(Some("env@test.claws/e"), Some("flag@test.claws/g")),
        "xmpp_direct:flag@test.claws/g"
    );
    let _ = std::fs::remove_file(file);
}

#[test]
fn bench_on_mem_reports_throughput_and_percentiles() {
    let out = claws(&[
        "bench",
        "--messages",
        "300",
        "--size",
        "64",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&stdout(&out));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["messages"], 300);
    assert!(lines[0]["per_second"].as_f64().unwrap() > 0.0);
    assert!(lines[0]["p99_ms"].as_f64().unwrap() >= lines[0]["p50_ms"].as_f64().unwrap());
}

#[test]
fn bench_repeat_prints_min_median_max_and_warns_when_runs_disagree() {
    let out = claws(&[
        "bench",
        "--messages",
        "300",
        "--size",
        "64",
        "--repeat",
        "3",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&stdout(&out));
    assert_eq!(lines.len(), 4, "three runs and a summary: {lines:#?}");
    for (i, line) in lines[..3].iter().enumerate() {
        assert_eq!(line["event"], "bench", "{line}");
        assert_eq!(line["round"], i as u64 + 1, "{line}");
    }
    let summary = &lines[3];
    assert_eq!(summary["event"], "summary", "{summary}");
    let side = &summary["sides"][0];
    assert_eq!(side["run"], "claws (mem)");
    assert_eq!(side["runs"], 3);
    let mut runs: Vec<f64> = lines[..3]
        .iter()
        .map(|l| l["per_second"].as_f64().unwrap())
        .collect();
    runs.sort_by(f64::total_cmp);
    let (min, median, max) = (
        side["min_per_second"].as_f64().unwrap(),
        side["median_per_second"].as_f64().unwrap(),
        side["max_per_second"].as_f64().unwrap(),
    );
    assert_eq!((min, median, max), (runs[0], runs[1], runs[2]), "{summary}");
    // The warning comes exactly when the runs are more than 20 % apart (of the median).
    let apart = (max - min) / median > 0.20;
    assert_eq!(side["disagree"], apart, "{summary}");
    let err = stderr(&out);
    assert_eq!(
        err.contains("claws: warning: the 3 runs of claws (mem) disagree by"),
        apart,
        "{err}"
    );

    // The human table: a header and a row per side.
    let out = claws(&[
        "bench",
        "--messages",
        "200",
        "--size",
        "64",
        "--repeat",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let header = text
        .lines()
        .find(|l| l.starts_with("stanzas/s"))
        .unwrap_or_else(|| panic!("no table: {text}"));
    for column in ["runs", "min", "median", "max", "spread"] {
        assert!(header.contains(column), "{header}");
    }
    assert!(
        text.lines().any(|l| l.starts_with("claws (mem)  ")),
        "{text}"
    );
}

#[test]
fn completions_name_every_subcommand() {
    let out = claws(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let script = stdout(&out);
    assert!(script.contains("complete -F _claws"), "{script}");
    for sub in [
        "listen",
        "send",
        "publish",
        "echo",
        "demo",
        "bench",
        "test",
        "topology",
        "gateway",
        "completions",
    ] {
        assert!(
            script.contains(&format!("claws__subcmd__{sub}")),
            "bash: {sub}"
        );
    }
    assert!(script.contains("--transport"), "global flags complete too");
    for (shell, mark) in [("zsh", "#compdef claws"), ("fish", "complete -c claws")] {
        let out = claws(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).contains(mark), "{shell}");
        assert!(stdout(&out).contains("topology"), "{shell}");
    }
    let out = claws(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn manpage_is_roff_naming_every_subcommand() {
    let out = claws(&["manpage"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let page = stdout(&out);
    // The header: roff requests only (clap_mangen defines a quote string first), then `.TH`.
    let header: Vec<&str> = page.lines().take_while(|l| !l.starts_with(".TH")).collect();
    assert!(header.iter().all(|l| l.starts_with('.')), "{page}");
    assert!(
        page.lines()
            .nth(header.len())
            .is_some_and(|l| l.starts_with(".TH claws 1 \"\" \"claws ")
                && l.ends_with("\" \"User Commands\"")),
        "{page}"
    );
    assert!(page.contains("\n.SH SYNOPSIS\n"), "{page}");
    for sub in [
        "listen",
        "send",
        "publish",
        "echo",
        "demo",
        "bench",
        "test",
        "topology",
        "gateway",
        "completions",
        "manpage",
    ] {
        assert!(page.contains(&format!("claws\\-{sub}(1)")), "{sub}: {page}");
    }
    assert!(
        !page.contains("claws\\-help(1)"),
        "help has no page of its own"
    );
    assert!(page.contains("\\-\\-transport"), "global flags too");

    // A subcommand's own page, and a name that is none: exit 2.
    let out = claws(&["manpage", "listen"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let page = stdout(&out);
    assert!(
        page.contains("\n.TH claws-listen 1 \"\" \"claws "),
        "{page}"
    );
    assert!(page.contains("\\-\\-count"), "{page}");
    let out = claws(&["manpage", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("listen, send"), "{}", stderr(&out));
}

/// `claws manpage | head -1`, and a reader gone before the first byte: no panic, exit 0.
#[test]
fn manpage_to_a_closed_pipe_is_no_panic() {
    use std::io::Read;
    // The reader takes one line and goes away (the page may fit the pipe's buffer whole).
    let mut child = Command::new(CLAWS)
        .arg("manpage")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the claws binary");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with('.'), "{line}");
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );

    // The reader closed before the process writes: the write fails with a broken pipe.
    let mut child = Command::new(CLAWS)
        .arg("manpage")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_BACKTRACE", "1")
        .spawn()
        .expect("run the claws binary");
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
}

/// `claws ARGS` with no colour variables, as a test would be run by anyone.
fn claws_plain_env(args: &[&str]) -> Command {
    let mut command = Command::new(CLAWS);
    command
        .args(args)
        .env_remove("CLAWS_URL")
        .env_remove("CLAWS_JID")
        .env_remove("CLAWS_TRANSPORT")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("CLICOLOR")
        .stdin(Stdio::null());
    command
}

#[test]
fn piped_output_has_no_colour() {
    for args in [
        &["demo"][..],
        &["listen", "--timeout", "300ms"],
        &["echo", "--count", "1"],
    ] {
        let mut command = claws_plain_env(args);
        if args[0] == "echo" {
            // Nothing arrives on mem: stop it after its `connected` line.
            command.stdout(Stdio::piped());
            let mut child = command.spawn().unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            child.kill().unwrap();
            child.wait().unwrap();
            assert!(line.starts_with("connected: "), "{line:?}");
            continue;
        }
        let out = command.output().unwrap();
        let text = stdout(&out);
        assert!(
            text.contains("connected") || text.contains("Direct"),
            "{args:?}: {text}"
        );
        assert!(!out.stdout.contains(&0x1b), "{args:?}: {text:?}");
    }
}

/// Under a pseudo-terminal (util-linux `script`; skipped where it cannot make one): colour for
/// `--format human` unless `NO_COLOR` is set to something; never for JSON.
#[cfg(target_os = "linux")]
#[test]
fn a_terminal_gets_colour_unless_no_color() {
    // What claws wrote to the terminal (`script` mixes in stderr, and ends lines with \r\n).
    let on_terminal = |args: &str, no_color: Option<&str>| -> String {
        let mut command = Command::new("script");
        command
            .args(["-qc", &format!("'{CLAWS}' {args}"), "/dev/null"])
            .env_remove("CLAWS_URL")
            .env_remove("CLAWS_JID")
            .env_remove("CLAWS_TRANSPORT")
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR_FORCE")
            .stdin(Stdio::null());
        if let Some(value) = no_color {
            command.env("NO_COLOR", value);
        }
        command.output().map(|out| stdout(&out)).unwrap_or_default()
    };
    let demo = on_terminal("demo", None);
    if !demo.contains("Direct") {
        eprintln!("skipped: `script` cannot run claws on a pseudo-terminal here: {demo:?}");
        return;
    }
    assert!(demo.contains("\x1b[32mw1\x1b[0m      <- "), "{demo:?}");
    assert!(demo.contains("\x1b[1m1. Direct"), "{demo:?}");
    assert!(demo.contains("\x1b[32mdone\x1b[0m: "), "{demo:?}");
    let listen = on_terminal("listen --timeout 300ms", None);
    assert!(
        listen.contains("\x1b[32mconnected\x1b[0m: claw `mem`"),
        "{listen:?}"
    );
    let demo = on_terminal("demo", Some(""));
    assert!(
        demo.contains('\x1b'),
        "an empty NO_COLOR counts as unset: {demo:?}"
    );
    for (args, no_color) in [
        ("demo", Some("1")),
        ("--format json demo", None),
        ("listen --timeout 300ms", Some("1")),
        ("--format json listen --timeout 300ms", None),
    ] {
        let text = on_terminal(args, no_color);
        assert!(
            text.contains("connected") || text.contains("<message"),
            "{args}: {text}"
        );
        assert!(!text.contains('\x1b'), "{args} {no_color:?}: {text:?}");
    }
}

#[test]
fn help_lists_global_options_under_their_own_heading() {
    for args in [&["--help"][..], &["listen", "--help"], &["bench", "-h"]] {
        let out = claws(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let help = stdout(&out);
        let global = help
            .find("\nGlobal options:\n")
            .unwrap_or_else(|| panic!("{args:?}: no Global options heading: {help}"));
        let options = help.find("\nOptions:\n").expect("an Options heading");
        let (own, globals) = (&help[options..global], &help[global..]);
        for flag in [
            "--transport <",
            "--url <",
            "--jid <",
            "--config <",
            "-v, --verbose",
            "--format <",
            "--metrics <",
        ] {
            assert!(
                globals.contains(flag),
                "{args:?}: {flag} not under Global options: {help}"
            );
            assert!(
                !own.contains(flag),
                "{args:?}: {flag} under Options: {help}"
            );
        }
    }
    let help = stdout(&claws(&["bench", "--help"]));
    let repeat = help.find("--repeat").expect("bench --repeat");
    assert!(repeat < help.find("Global options:").unwrap(), "{help}");
}

/// `--metrics` takes a socket address (exit 2 otherwise), and one that cannot be bound is
/// an error naming it (exit 1) before anything connects.
#[test]
fn metrics_address_is_checked() {
    let out = claws(&["--metrics", "localhost", "listen", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = claws(&["--metrics", &addr, "listen", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot serve metrics on {addr}")),
        "{err}"
    );
    assert!(
        stdout(&out).is_empty(),
        "nothing connected: {}",
        stdout(&out)
    );
}

#[test]
fn gateway_needs_its_settings_and_says_which() {
    let out = claws(&["gateway"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("[component] needs `server`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn gateway_with_an_unreachable_xmpp_server_exits_3_without_showing_the_secret() {
    let started = std::time::Instant::now();
    let out = claws(&[
        "gateway",
        "--server",
        "127.0.0.1:1",
        "--domain",
        "gw.example",
        "--secret",
        "hunter2-secret",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot connect claw `component`"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn test_runs_scenario_files_and_counts_steps() {
    let ping = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../claws-test/scenarios/ping.xml"
    );
    let out = claws(&["test", ping]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).trim_end().ends_with("4 passed, 0 failed"),
        "{}",
        stdout(&out)
    );

    let failing = std::env::temp_dir().join(format!("claws-cli-failing-{}.xml", unique()));
    std::fs::write(
        &failing,
        r#"<functional><steps>
             <step name="answered"><send><iq type="get" id="p1" from="{{tester}}" to="{{service}}"><ping xmlns="urn:xmpp:ping"/></iq></send>
               <expected><iq type="result" id="p1" from="{{service}}" to="{{tester}}"/></expected><check name="replied_once"/></step>
             <step name="wrongly expected"><send><presence from="{{tester}}"/></send>
               <expected><presence/></expected></step>
           </steps></functional>"#,
    )
    .unwrap();
    let out = claws(&["--format", "json", "test", failing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines = json_lines(&stdout(&out));
    assert_eq!(
        (lines[0]["passed"].as_u64(), lines[0]["failed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(lines[0]["steps"][1]["passed"], false);

    std::fs::write(&failing, "<functional><nonsense/></functional>").unwrap();
    let out = claws(&["test", failing.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a file that does not parse is a usage error"
    );
    let _ = std::fs::remove_file(failing);
}

#[test]
fn test_on_an_unreachable_broker_exits_3_and_does_not_pass_on_mem() {
    let ping = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../claws-test/scenarios/ping.xml"
    );
    let out = claws(&[
        "test",
        "--transport",
        "amqp091",
        "--url",
        "amqp://guest:guest@127.0.0.1:1/",
        ping,
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
    assert!(!stdout(&out).contains("passed"), "{}", stdout(&out));
}

fn claws_env(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(CLAWS);
    cmd.args(args)
        .env_remove("CLAWS_URL")
        .env_remove("CLAWS_JID")
        .env_remove("CLAWS_TRANSPORT")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run the claws binary")
}

/// Issue 16, row 3: the gateway's variable does not break other subcommands; the scheme is
/// CLAWS_KEY / CLAWS_TABLE__KEY; a bad key from the environment says where it came from.
#[test]
fn environment_variables_follow_one_scheme_and_bad_ones_are_named() {
    let out = claws_env(&[("CLAWS_COMPONENT_SECRET", "s")], &["topology"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for var in ["CLAWS_AMQP_URL", "CLAWS_TLS_CA", "CLAWS_AMQP091__TLS_CA"] {
        let out = claws_env(&[(var, "x")], &["--transport", "amqp091", "topology"]);
        assert_eq!(out.status.code(), Some(2), "{var}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("environment variable {var}")),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    }
    // The nested form sets a table's key: here the component's secret (then the XMPP server
    // is unreachable: exit 3, and the secret is not shown).
    let out = claws_env(
        &[("CLAWS_COMPONENT__SECRET", "hunter2-env")],
        &[
            "gateway",
            "--server",
            "127.0.0.1:1",
            "--domain",
            "gw.example",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));
    let out = claws_env(
        &[("CLAWS_PREFETCH", "7")],
        &["--format", "json", "topology"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Issue 16, row 4: numeric flags are checked by the parser: exit 2 with a message, no panic.
#[test]
fn numeric_flags_are_refused_with_exit_2_not_a_panic() {
    for args in [
        &["listen", "--timeout", "1e30"][..],
        &["listen", "--timeout", "1e19"],
        &["listen", "--count", "0"],
        &["echo", "--count", "0"],
        &["bench", "--messages", "0"],
    ] {
        let out = claws(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("invalid value"), "{}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
    let out = claws(&["--format", "json", "listen", "--timeout", "250ms"]);
    assert_eq!(out.status.code(), Some(1), "times out: {}", stderr(&out));
}

/// Issue 16, row 6: `send`/`publish` refuse what is not one well-formed element (before
/// connecting); `--raw` skips the check.
#[test]
fn send_and_publish_check_the_stanza() {
    for stanza in ["<message><body>oops</message", "", "  ", "<a/><b/>", "text"] {
        let out = claws(&["send", "--to", "x@test.claws/r", stanza]);
        assert_eq!(out.status.code(), Some(2), "{stanza:?}: {}", stderr(&out));
        assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
        let out = claws(&["publish", stanza]);
        assert_eq!(out.status.code(), Some(2), "{stanza:?}: {}", stderr(&out));
    }
    let out = claws(&[
        "send",
        "--to",
        "x@test.claws/r",
        "<message><body>oops</message",
    ]);
    assert!(stderr(&out).contains("--raw"), "{}", stderr(&out));
    // With --raw the payload goes out as it is: on mem nobody listens, so "no route" (exit 1).
    let out = claws(&["send", "--raw", "--to", "x@test.claws/r", "not xml"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no route"), "{}", stderr(&out));
}

/// Issue 16, row 6: a config path that is not a readable file is a usage error.
#[test]
fn config_that_is_not_a_file_exits_2() {
    let out = claws(&["--config", "/tmp", "listen", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not a file"), "{}", stderr(&out));
}

/// A running `claws` process whose stdout lines arrive on a channel.
#[cfg_attr(not(feature = "amqp091"), allow(dead_code))]
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

#[cfg_attr(not(feature = "amqp091"), allow(dead_code))]
impl Running {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(CLAWS)
            .args(args)
            .env_remove("CLAWS_URL")
            .env_remove("CLAWS_JID")
            .env_remove("CLAWS_TRANSPORT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the claws binary");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The next stdout line as JSON.
    fn next(&self) -> Value {
        let line = self.next_text();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"))
    }

    /// The next stdout line.
    fn next_text(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("no line within {WAIT:?}: {e}"))
    }

    /// Waits for the process to exit; returns its code, the remaining stdout lines and stderr.
    fn finish(self) -> (Option<i32>, Vec<Value>, String) {
        let (code, lines, err) = self.finish_text();
        let lines = lines
            .iter()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"))
            })
            .collect();
        (code, lines, err)
    }

    /// As [`finish`](Self::finish), the lines as text.
    fn finish_text(mut self) -> (Option<i32>, Vec<String>, String) {
        let deadline = Instant::now() + WAIT;
        let mut lines = Vec::new();
        // The reader thread ends when the process closes its stdout, i.e. when it exits.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("claws did not exit within {WAIT:?}")
                }
            }
        }
        let status = self.child.wait().expect("wait for claws");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        (status.code(), lines, err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(feature = "amqp091")]
mod rabbitmq {
    use super::*;

    /// The node under test (`TEST_RABBITMQ=4`: the RabbitMQ 4 node).
    static URL: std::sync::LazyLock<String> = std::sync::LazyLock::new(claws_test::rabbitmq::url);

    /// Tests that consume or publish broadcasts take this lock: a broadcast reaches every
    /// fanout queue on the broker, so they must not see each other's.
    static BROADCASTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn amqp(jid: &str, rest: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--transport",
            "amqp091",
            "--url",
            URL.as_str(),
            "--jid",
            jid,
            "--format",
            "json",
        ]
        .map(String::from)
        .to_vec();
        args.extend(rest.iter().map(|s| s.to_string()));
        args
    }

    fn refs(args: &[String]) -> Vec<&str> {
        args.iter().map(String::as_str).collect()
    }

    /// A config file that consumes only the direct subscriptions (no broadcasts).
    fn direct_only_config(name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("claws-cli-{name}-{}.toml", unique()));
        std::fs::write(
            &path,
            "[subscriptions]\nfanout = false\ngroup_fanout = false\n",
        )
        .expect("write config");
        path
    }

    /// Deletes the queues `jids` declared (every subscription, whether or not it was used).
    fn delete_queues(jids: &[&str]) {
        use lapin::options::QueueDeleteOptions;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let conn = lapin::Connection::connect(&URL, lapin::ConnectionProperties::default())
                .await
                .expect("connect to RabbitMQ to clean up");
            let channel = conn.create_channel().await.expect("channel");
            for jid in jids {
                let jid = claws::jid::parse(jid).expect("JID");
                for q in claws::topology::queues(&jid, claws::topology::Subscriptions::all())
                    .expect("queues")
                {
                    let _ = channel
                        .queue_delete(q.name.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
            }
            let _ = conn.close(200, "cleanup".into()).await;
        });
    }

    /// claws-test's ping.xml with JIDs unique to `id`: (the file, service, tester, the other
    /// sender).
    fn ping_scenario(id: &str) -> (std::path::PathBuf, String, String, String) {
        let service = format!("cli-scn-{id}.test.claws/e1");
        let tester = format!("cli-scn-{id}@test.claws/pc");
        let other = format!("cli-scn-{id}-alice@test.claws/home");
        let ping = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../claws-test/scenarios/ping.xml"
        ))
        .expect("read ping.xml")
        .replace("echo.example.com/e1", &service)
        .replace("bob@example.com/pc", &tester)
        .replace("alice@example.com/home", &other);
        let file = std::env::temp_dir().join(format!("claws-cli-ping-{id}.xml"));
        std::fs::write(&file, ping).expect("write the scenario");
        (file, service, tester, other)
    }

    /// The queues of `jid` (every subscription) that exist on the broker.
    fn queues_left(jid: &str) -> Vec<String> {
        let queues = claws::topology::queues(
            &claws::jid::parse(jid).unwrap(),
            claws::topology::Subscriptions::all(),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let conn = lapin::Connection::connect(&URL, lapin::ConnectionProperties::default())
                .await
                .expect("connect to RabbitMQ");
            let mut left = Vec::new();
            for q in queues {
                // A passive declare of a missing queue closes the channel: one channel each.
                let channel = conn.create_channel().await.expect("channel");
                let passive = lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                if channel
                    .queue_declare(q.name.as_str().into(), passive, Default::default())
                    .await
                    .is_ok()
                {
                    left.push(q.name.to_string());
                }
            }
            let _ = conn.close(200, "checked".into()).await;
            left
        })
    }

    /// Over AMQP 1.0 too, with a URL that names no vhost (the default one): the scenario
    /// passes and the service's queues are deleted afterwards.
    #[cfg(feature = "amqp10")]
    #[test]
    fn test_runs_the_ping_scenario_over_amqp10() {
        let _lock = BROADCASTS.lock().unwrap_or_else(|e| e.into_inner());
        let id = unique();
        let (file, service, tester, other) = ping_scenario(&id);
        let out = claws(&[
            "--transport",
            "amqp10",
            "--url",
            &format!(
                "amqp://guest:guest@127.0.0.1:{}/",
                claws_test::rabbitmq::port()
            ),
            "--format",
            "json",
            "test",
            file.to_str().unwrap(),
        ]);
        let left = queues_left(&service);
        delete_queues(&[&service, &tester, &other]);
        let _ = std::fs::remove_file(file);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}\n{}",
            stdout(&out),
            stderr(&out)
        );
        let report = &json_lines(&stdout(&out))[0];
        assert_eq!(report["transport"], "amqp10", "{report}");
        assert_eq!(
            (report["passed"].as_u64(), report["failed"].as_u64()),
            (Some(4), Some(0)),
            "{report}"
        );
        assert!(left.is_empty(), "queues left behind: {left:?}");
    }

    /// `claws test --transport amqp091` runs the echo service and the testers on RabbitMQ: the
    /// echo's answers to the tester reach a `claws listen` consuming as the tester, and the
    /// service's queues are gone afterwards.
    #[test]
    fn test_runs_the_ping_scenario_on_rabbitmq() {
        // The service consumes broadcasts too: keep other tests' broadcasts away from it.
        let _lock = BROADCASTS.lock().unwrap_or_else(|e| e.into_inner());
        let id = unique();
        let (file, service, tester, other) = ping_scenario(&id);

        let config = direct_only_config("scenario");
        let config_path = config.to_string_lossy().into_owned();
        let args = amqp(
            &tester,
            &[
                "--config",
                &config_path,
                "listen",
                "--count",
                "2",
                "--timeout",
                "30",
            ],
        );
        let listener = Running::spawn(&refs(&args));
        assert_connected_via_rabbitmq(&listener.next());

        let args = amqp(&tester, &["test", file.to_str().unwrap()]);
        let out = claws(&refs(&args));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}\n{}",
            stdout(&out),
            stderr(&out)
        );
        let report = &json_lines(&stdout(&out))[0];
        assert_eq!(report["transport"], "amqp091", "{report}");
        assert_eq!(
            (report["passed"].as_u64(), report["failed"].as_u64()),
            (Some(4), Some(0)),
            "{report}"
        );

        // The echo service's answers went over the broker to the tester's queue.
        let (code, rest, err) = listener.finish();
        assert_eq!(code, Some(0), "{err}");
        let payloads: Vec<&str> = rest.iter().filter_map(|l| l["payload"].as_str()).collect();
        assert_eq!(payloads.len(), 2, "{rest:?}");
        assert!(
            payloads[0].starts_with("<iq") && payloads[0].contains(r#"id="ping-1""#),
            "{payloads:?}"
        );
        assert!(payloads[1].contains("<body>hello</body>"), "{payloads:?}");
        assert!(
            rest.iter().all(|l| l["via"]["claw"] == "amqp091"),
            "{rest:?}"
        );

        // `claws test` deleted the service's queues.
        let left = queues_left(&service);
        delete_queues(&[&service, &tester, &other]);
        let _ = std::fs::remove_file(file);
        let _ = std::fs::remove_file(config);
        assert!(left.is_empty(), "queues left behind: {left:?}");
    }

    #[test]
    fn listen_then_send_direct_and_to_the_group() {
        let id = unique();
        let listener_jid = format!("cli-listen-{id}@test.claws/l1");
        let group = format!("cli-listen-{id}@test.claws");
        let sender_jid = format!("cli-send-{id}@test.claws/s");
        let config = direct_only_config("direct");
        let config_path = config.to_string_lossy().into_owned();
        let mut args = amqp(
            &listener_jid,
            &[
                "--config",
                &config_path,
                "listen",
                "--count",
                "2",
                "--timeout",
                "30",
            ],
        );
        let listener = Running::spawn(&refs(&args));
        assert_connected_via_rabbitmq(&listener.next());

        args = amqp(
            &sender_jid,
            &[
                "send",
                "--to",
                &listener_jid,
                "--id",
                "id-1",
                "<message><body>one</body></message>",
            ],
        );
        let out = claws(&refs(&args));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(json_lines(&stdout(&out))[0]["event"], "sent");
        args = amqp(
            &sender_jid,
            &[
                "send",
                "--to",
                &group,
                "<message><body>two</body></message>",
            ],
        );
        let out = claws(&refs(&args));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

        let first = listener.next();
        let (code, rest, err) = listener.finish();
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(rest.len(), 1, "{rest:?}");
        assert_eq!(
            first,
            // `send` wrote `from` (--jid) into the stanza, which had none; it is the sender.
            serde_json::json!({"event": "received",
                "payload": format!("<message from=\"{sender_jid}\"><body>one</body></message>"),
                "via": {"jid": listener_jid, "exchange": "xmpp_direct", "claw": "amqp091", "id": "id-1", "queue": "direct",
                    "from": sender_jid}})
        );
        assert_eq!(
            rest[0],
            serde_json::json!({"event": "received",
                "payload": format!("<message from=\"{sender_jid}\"><body>two</body></message>"),
                "via": {"jid": group, "exchange": "xmpp_direct", "claw": "amqp091", "id": null, "queue": "group_direct",
                    "from": sender_jid}})
        );
        let _ = std::fs::remove_file(config);
        delete_queues(&[&listener_jid, &sender_jid]);
    }

    #[test]
    fn publish_reaches_the_instance_and_its_group() {
        let _lock = BROADCASTS.lock().unwrap_or_else(|e| e.into_inner());
        let id = unique();
        let listener_jid = format!("cli-bcast-{id}@test.claws/l1");
        let sender_jid = format!("cli-bcast-{id}-pub@test.claws/p");
        let args = amqp(
            &listener_jid,
            &["listen", "--count", "2", "--timeout", "30"],
        );
        let listener = Running::spawn(&refs(&args));
        assert_eq!(listener.next()["event"], "connected");

        let args = amqp(&sender_jid, &["publish", "-"]);
        let mut publish = Command::new(CLAWS)
            .args(refs(&args))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn claws publish");
        {
            use std::io::Write;
            let mut stdin = publish.stdin.take().expect("stdin");
            stdin.write_all(b"<presence/>\n").expect("write the stanza");
        }
        let out = publish.wait_with_output().expect("claws publish");
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

        let first = listener.next();
        let (code, rest, err) = listener.finish();
        assert_eq!(code, Some(0), "{err}");
        let mut got = vec![first];
        got.extend(rest);
        let mut queues: Vec<_> = got
            .iter()
            .map(|l| l["via"]["queue"].as_str().unwrap().to_owned())
            .collect();
        queues.sort();
        assert_eq!(queues, ["fanout", "group_fanout"]);
        for line in &got {
            assert_eq!(
                line["payload"],
                format!("<presence from=\"{sender_jid}\"/>")
            );
            assert_eq!(line["via"]["exchange"], "xmpp_fanout");
            assert_eq!(
                line["via"]["jid"],
                sender_jid.as_str(),
                "a broadcast's routing key is the sender"
            );
            assert_eq!(line["via"]["id"], Value::Null);
        }
        delete_queues(&[&listener_jid, &sender_jid]);
    }

    #[test]
    fn echo_answers_back_to_the_sender() {
        let id = unique();
        let echo_jid = format!("cli-echo-{id}@test.claws/e");
        let client_jid = format!("cli-echo-{id}-client@test.claws/c");
        let config = direct_only_config("echo");
        let config_path = config.to_string_lossy().into_owned();

        let args = amqp(
            &echo_jid,
            &["--config", &config_path, "echo", "--count", "1"],
        );
        let echo = Running::spawn(&refs(&args));
        assert_eq!(echo.next()["event"], "connected");
        let args = amqp(
            &client_jid,
            &[
                "--config",
                &config_path,
                "listen",
                "--count",
                "1",
                "--timeout",
                "30",
            ],
        );
        let listener = Running::spawn(&refs(&args));
        assert_eq!(listener.next()["event"], "connected");

        let stanza =
            format!(r#"<message from="{client_jid}" to="{echo_jid}"><body>hi</body></message>"#);
        let args = amqp(
            &client_jid,
            &["send", "--to", &echo_jid, "--id", "e1", &stanza],
        );
        let out = claws(&refs(&args));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

        let reply = listener.next();
        // The echo may mark its answer (`<echoed xmlns="urn:xmpp:claws:echo:0"/>`).
        let payload = reply["payload"]
            .as_str()
            .unwrap()
            .replace(r#"<echoed xmlns="urn:xmpp:claws:echo:0"/>"#, "");
        assert_eq!(
            payload,
            format!(r#"<message from="{echo_jid}" to="{client_jid}"><body>hi</body></message>"#)
        );
        assert_eq!(reply["via"]["queue"], "direct");
        assert_eq!(
            reply["via"]["id"], "e1",
            "the reply keeps the correlation id"
        );
        let (code, _, err) = listener.finish();
        assert_eq!(code, Some(0), "{err}");
        let seen = echo.next();
        assert_eq!(seen["event"], "received");
        assert_eq!(seen["via"]["jid"], echo_jid.as_str());
        let (code, _, err) = echo.finish();
        assert_eq!(code, Some(0), "{err}");
        let _ = std::fs::remove_file(config);
        delete_queues(&[&echo_jid, &client_jid]);
    }

    /// The transient vhost the Erlang world lives in (durable = false: transient exchanges).
    fn transient_url() -> String {
        claws_test::rabbitmq::transient_url()
    }

    /// The loop of the peers issue, end to end: `claws echo` fed one message, without
    /// `reply_to`, by a peer that behaves as the Erlang claw answers the peer once (by the
    /// stanza's `from`), never itself, and leaves nothing in any queue.
    #[test]
    fn echo_answers_a_peer_without_reply_to_once_and_never_itself() {
        let id = unique();
        let url = transient_url();
        let echo_jid = format!("claws-{id}@x/r1");
        let peer_jid = format!("orig-{id}@x/e1");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../claws-amqp091/tests/interop/erlang_peer.py"
        );
        let mut peer = Command::new("/usr/bin/python3");
        peer.args([script, &url, &peer_jid]);
        if claws_test::rabbitmq::on_rabbitmq4() {
            // 4.3 refuses the Erlang claw's transient non-exclusive queues (see the script).
            peer.arg("exclusive");
        }
        let mut peer = peer
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("/usr/bin/python3 with pika (scripts/provision)");
        let mut peer_in = peer.stdin.take().unwrap();
        let peer_out = peer.stdout.take().unwrap();
        let (tx, peer_lines) = mpsc::channel::<Value>();
        std::thread::spawn(move || {
            for line in BufReader::new(peer_out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        let ready = peer_lines
            .recv_timeout(WAIT)
            .expect("the peer is consuming");
        assert_eq!(ready["ready"], true);

        let mut echo = Command::new(CLAWS)
            .args([
                "--transport",
                "amqp091",
                "--url",
                &url,
                "--jid",
                &echo_jid,
                "--format",
                "json",
                "echo",
            ])
            .env("CLAWS_AMQP091__DURABLE", "false")
            .env_remove("CLAWS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn claws echo");
        let echo_out = echo.stdout.take().unwrap();
        let (etx, echo_lines) = mpsc::channel::<Value>();
        std::thread::spawn(move || {
            for line in BufReader::new(echo_out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    if etx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        assert_eq!(
            echo_lines.recv_timeout(WAIT).expect("echo connects")["event"],
            "connected"
        );
        use std::io::Write;
        writeln!(
            peer_in,
            "send {echo_jid} m1 <message from='{peer_jid}' to='{echo_jid}' id='m1'><body>hi {id}</body></message>"
        )
        .unwrap();
        // The peer gets exactly one echo, addressed to it.
        let reply = loop {
            let v = peer_lines
                .recv_timeout(WAIT)
                .expect("the echo reached the peer");
            if v.get("sent").is_none() {
                break v;
            }
        };
        assert_eq!(reply["routing_key"], peer_jid.as_str(), "{reply}");
        assert_eq!(reply["correlation_id"], "m1", "{reply}");
        let seen = echo_lines
            .recv_timeout(WAIT)
            .expect("echo printed what it got");
        assert_eq!(seen["via"]["from"], peer_jid.as_str(), "{seen}");
        // Nothing more: no second echo, no echo of the echo, nothing left queued.
        assert!(peer_lines.recv_timeout(Duration::from_secs(2)).is_err());
        assert!(echo_lines.recv_timeout(Duration::from_millis(100)).is_err());
        let out = claws_test::rabbitmq::ctl(&[
            "-q",
            "list_queues",
            "-p",
            "claws-transient",
            "name",
            "messages",
        ]);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.contains(&id) {
                assert!(line.ends_with("\t0"), "left in a queue: {line}");
            }
        }
        let _ = echo.kill();
        let _ = echo.wait();
        let _ = writeln!(peer_in, "quit");
        let _ = peer.wait();
        for q in ["xmpp_direct", "xmpp_fanout"] {
            for j in [
                echo_jid.clone(),
                echo_jid.trim_end_matches("/r1").to_owned(),
            ] {
                let _ = claws_test::rabbitmq::ctl(&[
                    "-q",
                    "delete_queue",
                    "-p",
                    "claws-transient",
                    &format!("{q}:{j}"),
                ]);
            }
        }
    }

    #[test]
    fn send_writes_from_into_a_stanza_without_one_and_topology_shows_durability() {
        let id = unique();
        let listener_jid = format!("cli-from-{id}@test.claws/l");
        let sender_jid = format!("cli-from-{id}-s@test.claws/s");
        let config = direct_only_config("from");
        let config_path = config.to_string_lossy().into_owned();
        let args = amqp(
            &listener_jid,
            &[
                "--config",
                &config_path,
                "listen",
                "--count",
                "1",
                "--timeout",
                "30",
            ],
        );
        let listener = Running::spawn(&refs(&args));
        assert_eq!(listener.next()["event"], "connected");
        let args = amqp(
            &sender_jid,
            &[
                "send",
                "--to",
                &listener_jid,
                "<message><body>x</body></message>",
            ],
        );
        let out = claws(&refs(&args));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let got = listener.next();
        let payload = got["payload"].as_str().unwrap();
        assert!(
            payload.contains(&format!("from=\"{sender_jid}\"")),
            "{payload}"
        );
        assert_eq!(got["via"]["from"], sender_jid.as_str(), "{got}");
        let (code, _, err) = listener.finish();
        assert_eq!(code, Some(0), "{err}");
        let _ = std::fs::remove_file(config);
        delete_queues(&[&listener_jid, &sender_jid]);

        // The plan shows each exchange's and queue's durability.
        let out = claws_env(
            &[("CLAWS_AMQP091__DURABLE", "false")],
            &[
                "--transport",
                "amqp091",
                "--jid",
                &listener_jid,
                "--format",
                "json",
                "topology",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let lines = json_lines(&stdout(&out));
        assert!(lines
            .iter()
            .filter(|l| l["kind"] == "exchange" || l["kind"] == "queue")
            .all(|l| l["durable"] == false));
    }

    /// `--format human`: one line per stanza, whatever the stanza holds.
    #[test]
    fn human_output_prints_a_multi_line_stanza_on_one_line() {
        let id = unique();
        let listener_jid = format!("cli-human-{id}@test.claws/l1");
        let sender_jid = format!("cli-human-{id}-s@test.claws/s");
        let config = direct_only_config("human");
        let config_path = config.to_string_lossy().into_owned();
        let mut args = amqp(
            &listener_jid,
            &[
                "--config",
                &config_path,
                "listen",
                "--count",
                "2",
                "--timeout",
                "30",
            ],
        );
        args.retain(|a| a != "json" && a != "--format");
        let listener = Running::spawn(&refs(&args));
        let connected = listener.next_text();
        assert!(connected.starts_with("connected:"), "{connected}");

        let multi = "<message>\n  <body>line one\nline\ttwo\u{1b}[31m</body>\n</message>";
        for stanza in [multi, "<message><body>plain</body></message>"] {
            let args = amqp(&sender_jid, &["send", "--to", &listener_jid, stanza]);
            let out = claws(&refs(&args));
            assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        }
        let (code, lines, err) = listener.finish_text();
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(lines.len(), 2, "one line per stanza: {lines:#?}");
        assert!(lines[0].starts_with("received <message"), "{}", lines[0]);
        assert!(
            lines[0].contains(r"<body>line one\nline\ttwo\x1b[31m</body>\n</message> via "),
            "{}",
            lines[0]
        );
        assert!(!lines[0].contains('\u{1b}'), "{}", lines[0]);
        assert!(lines[1].contains("<body>plain</body>"), "{}", lines[1]);
        let _ = std::fs::remove_file(config);
        delete_queues(&[&listener_jid, &sender_jid]);
    }

    #[test]
    fn send_to_nobody_fails_with_exit_1() {
        let id = unique();
        let sender = format!("cli-noroute-{id}@test.claws/s");
        let args = amqp(
            &sender,
            &[
                "send",
                "--to",
                &format!("nobody-{id}@test.claws/x"),
                "<message/>",
            ],
        );
        let out = claws(&refs(&args));
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains("no route"), "{}", stderr(&out));
        delete_queues(&[&sender]);
    }

    /// The no-route warning (library logs on, at every level) names the routing key and the
    /// sizes, never the payload: not as text, not as lapin's byte list.
    #[test]
    fn the_no_route_warning_never_shows_the_payload() {
        let id = unique();
        let sender = format!("cli-noroute-{id}-w@test.claws/s");
        let nobody = format!("nobody-{id}@test.claws/x");
        for verbose in ["-v", "-vvvv"] {
            let mut args = amqp(
                &sender,
                &[
                    verbose,
                    "send",
                    "--to",
                    &nobody,
                    "<message><body>PAYLOAD-MARK</body></message>",
                ],
            );
            args.retain(|a| a != "json" && a != "--format");
            let out = claws(&refs(&args));
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{err}");
            let warning = err
                .lines()
                .find(|l| l.contains("no queue takes"))
                .unwrap_or_else(|| panic!("{verbose}: no no-route warning: {err}"));
            assert!(
                warning.contains(&format!("routing_key={nobody}")),
                "{warning}"
            );
            assert!(warning.contains("bytes="), "{warning}");
            // "PAYLOAD" as text, and as the bytes lapin's Debug would print ([80, 65, 89, ...]).
            assert!(!err.contains("PAYLOAD-MARK"), "{verbose}: {err}");
            assert!(
                !err.contains("80, 65, 89, 76, 79, 65, 68"),
                "{verbose}: {err}"
            );
            assert!(
                !err.contains("Server returned us a message"),
                "{verbose}: {err}"
            );
        }
        delete_queues(&[&sender]);
    }

    #[test]
    fn unreachable_broker_exits_3_quickly_without_the_password() {
        let started = Instant::now();
        let out = claws(&[
            "--transport",
            "amqp091",
            "--url",
            "amqp://guest:s3cr3t-pw@127.0.0.1:1/",
            "--jid",
            "cli-unreachable@test.claws/x",
            "listen",
        ]);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
        let err = stderr(&out);
        assert!(!err.contains("s3cr3t-pw"), "{err}");
        assert!(err.contains("127.0.0.1:1"), "names the endpoint: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    }

    #[test]
    fn topology_apply_declares_the_queues() {
        let jid = format!("cli-topo-{}@test.claws/r", unique());
        let args = amqp(&jid, &["topology", "--apply"]);
        let out = claws(&refs(&args));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let lines = json_lines(&stdout(&out));
        assert!(lines
            .iter()
            .any(|l| l["kind"] == "exchange" && l["name"] == "xmpp_dead_letter"));
        let direct = lines
            .iter()
            .find(|l| l["kind"] == "queue" && l["subscription"] == "direct")
            .expect("the direct queue");
        assert_eq!(direct["name"], format!("xmpp_direct:{jid}"));
        assert!(direct["arguments"]["x-expires"].is_i64(), "{direct}");
        assert_eq!(lines.last().unwrap()["event"], "applied");

        // The queues exist now: a passive declare succeeds.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let conn = lapin::Connection::connect(&URL, lapin::ConnectionProperties::default())
                .await
                .expect("connect");
            let channel = conn.create_channel().await.expect("channel");
            let passive = lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            for q in claws::topology::queues(
                &claws::jid::parse(&jid).unwrap(),
                claws::topology::Subscriptions::all(),
            )
            .unwrap()
            {
                channel
                    .queue_declare(
                        q.name.as_str().into(),
                        passive,
                        lapin::types::FieldTable::default(),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{} was not declared: {e}", q.name));
            }
            let _ = conn.close(200, "checked".into()).await;
        });
        delete_queues(&[&jid]);
    }

    #[test]
    fn bench_with_baseline_prints_the_ratio() {
        let args = amqp(
            "bench@test.claws/b",
            &["bench", "--messages", "300", "--size", "32", "--baseline"],
        );
        let out = claws(&refs(&args));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let lines = json_lines(&stdout(&out));
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0]["run"], "claws (amqp091)");
        assert_eq!(lines[1]["run"], "lapin (raw)");
        assert!(lines[2]["throughput_ratio"].as_f64().unwrap() > 0.0);
    }

    /// Issue 18: `--baseline` on amqp10 runs raw fe2o3-amqp.
    #[cfg(feature = "amqp10")]
    #[test]
    fn amqp10_bench_with_baseline_runs_raw_fe2o3() {
        let jid = format!("bench10-{}@test.claws/b", unique());
        let out = claws(&[
            "--transport",
            "amqp10",
            "--url",
            URL.as_str(),
            "--jid",
            &jid,
            "--format",
            "json",
            "bench",
            "--messages",
            "300",
            "--size",
            "32",
            "--baseline",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let lines = json_lines(&stdout(&out));
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0]["run"], "claws (amqp10)");
        assert_eq!(lines[1]["run"], "fe2o3-amqp (raw)");
        assert!(lines[2]["throughput_ratio"].as_f64().unwrap() > 0.0);
    }

    /// Issue 16, row 6: over AMQP 1.0 RabbitMQ 3.x accepts what no queue takes, so `send`
    /// does not claim a confirmed route (RabbitMQ 4 says "released": no route, exit 1).
    #[cfg(feature = "amqp10")]
    #[test]
    fn amqp10_send_says_routing_is_not_verified() {
        let id = unique();
        let sender = format!("cli-amqp10-{id}@test.claws/s");
        let to = format!("nobody-{id}@test.claws/x");
        let send = |format: &str| {
            claws(&[
                "--transport",
                "amqp10",
                "--url",
                URL.as_str(),
                "--jid",
                &sender,
                "--format",
                format,
                "send",
                "--to",
                &to,
                "<message/>",
            ])
        };
        let out = send("human");
        if claws_test::rabbitmq::on_rabbitmq4() {
            // RabbitMQ 4 releases what no queue takes: a verified "no route".
            assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
            assert!(stderr(&out).contains("no route"), "{}", stderr(&out));
            return;
        }
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(
            stdout(&out).contains("accepted; routing not verified on this broker"),
            "{}",
            stdout(&out)
        );
        let out = send("json");
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(json_lines(&stdout(&out))[0]["routing"], "not verified");
        delete_queues(&[&sender]);
    }

    #[cfg(feature = "amqp10")]
    #[test]
    fn demo_runs_on_rabbitmq_over_amqp10() {
        let _lock = BROADCASTS.lock().unwrap_or_else(|e| e.into_inner());
        let out = claws(&[
            "--transport",
            "amqp10",
            "--url",
            URL.as_str(),
            "--format",
            "json",
            "demo",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let lines = json_lines(&stdout(&out));
        let received: Vec<_> = lines.iter().filter(|l| l["event"] == "received").collect();
        assert_eq!(received.len(), 16, "{lines:?}");
        assert!(received.iter().all(|l| l["via"]["claw"] == "amqp10"));
        assert_eq!(lines.last().unwrap()["event"], "done");
    }

    #[test]
    fn demo_runs_on_rabbitmq() {
        let _lock = BROADCASTS.lock().unwrap_or_else(|e| e.into_inner());
        let out = claws(&[
            "--transport",
            "amqp091",
            "--url",
            URL.as_str(),
            "--format",
            "json",
            "demo",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let lines = json_lines(&stdout(&out));
        let received = lines.iter().filter(|l| l["event"] == "received").count();
        assert_eq!(received, 16, "{lines:?}");
        assert_eq!(lines.last().unwrap()["event"], "done");
    }

    /// `amqps://` from the command line: the URL and CA come from a config file, the listener
    /// connects to RabbitMQ's TLS listener (scripts/provision sets it up), a plain `send` reaches
    /// it; without the CA the same command is a connection error (exit 3) that names the fix.
    #[cfg(feature = "amqp091-tls")]
    #[test]
    fn listen_over_tls_with_the_ca_from_the_config_file() {
        let ca = "/etc/rabbitmq/claws-tls/ca.pem";
        assert!(
            std::path::Path::new(ca).exists(),
            "no test CA at {ca}: run scripts/provision"
        );
        let id = unique();
        let tls = format!("127.0.0.1:{}", claws_test::rabbitmq::tls_port());
        let listener_jid = format!("cli-tls-{id}@test.claws/l1");
        let sender_jid = format!("cli-tls-{id}-s@test.claws/s");
        let config = std::env::temp_dir().join(format!("claws-cli-tls-{id}.toml"));
        std::fs::write(
            &config,
            format!(
                "url = \"amqps://guest:guest@{tls}/%2f\"\n\
                 [subscriptions]\nfanout = false\ngroup_fanout = false\n\
                 [amqp091]\ntls_ca_file = \"{ca}\"\n"
            ),
        )
        .expect("write config");
        let config_path = config.to_string_lossy().into_owned();
        let listen = [
            "--transport",
            "amqp091",
            "--config",
            &config_path,
            "--jid",
            &listener_jid,
            "--format",
            "json",
            "listen",
            "--count",
            "1",
            "--timeout",
            "30",
        ];
        let listener = Running::spawn(&listen);
        assert_connected_via(&listener.next(), &format!("amqps://guest@{tls}/"));
        let args = amqp(
            &sender_jid,
            &["send", "--to", &listener_jid, "<message>tls</message>"],
        );
        let out = claws(&refs(&args));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let received = listener.next();
        assert_eq!(
            received["payload"],
            format!("<message from=\"{sender_jid}\">tls</message>")
        );
        let (code, _, err) = listener.finish();
        assert_eq!(code, Some(0), "{err}");

        // The same URL without the CA: the broker's certificate is not trusted.
        let url = format!("amqps://guest:guest@{tls}/%2f");
        let out = claws(&[
            "--transport",
            "amqp091",
            "--url",
            &url,
            "--jid",
            &sender_jid,
            "send",
            "--to",
            &listener_jid,
            "<message/>",
        ]);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert!(stderr(&out).contains("tls_ca_file"), "{}", stderr(&out));
        let _ = std::fs::remove_file(config);
        delete_queues(&[&listener_jid, &sender_jid]);
    }
}

/// A `connected` line of the amqp091 claw names the node it is connected to, without password.
fn assert_connected_via_rabbitmq(line: &serde_json::Value) {
    assert_connected_via(
        line,
        &format!("amqp://guest@127.0.0.1:{}/", claws_test::rabbitmq::port()),
    );
}

/// A `connected` line of the amqp091 claw whose endpoint starts with `prefix`.
fn assert_connected_via(line: &serde_json::Value, prefix: &str) {
    assert_eq!(line["event"], "connected", "{line}");
    assert_eq!(line["claw"], "amqp091", "{line}");
    let endpoint = line["endpoint"].as_str().unwrap_or_default();
    assert!(endpoint.starts_with(prefix), "{line}");
}

/// Process tests of issue 16: the tool survives what the library survives.
#[cfg(feature = "amqp091")]
mod robustness {
    use std::collections::HashSet;

    use super::*;

    /// The node under test (`TEST_RABBITMQ=4`: the RabbitMQ 4 node).
    static URL: std::sync::LazyLock<String> = std::sync::LazyLock::new(claws_test::rabbitmq::url);

    fn listen_args(jid: &str, config: &str, rest: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--transport",
            "amqp091",
            "--url",
            URL.as_str(),
            "--jid",
            jid,
            "--config",
            config,
            "--format",
            "json",
            "listen",
        ]
        .map(String::from)
        .to_vec();
        args.extend(rest.iter().map(|s| s.to_string()));
        args
    }

    fn refs(args: &[String]) -> Vec<&str> {
        args.iter().map(String::as_str).collect()
    }

    fn direct_only_config() -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("claws-cli-robust-{}.toml", unique()));
        std::fs::write(
            &path,
            "[subscriptions]\nfanout = false\ngroup_fanout = false\ngroup_direct = false\n",
        )
        .expect("write config");
        path
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn payload(i: usize) -> String {
        format!("<message id=\"m{i}\"><body>{i}</body></message>")
    }

    /// Publishes `payload(i)` for `range` to `jid`'s direct queue (routing key = the JID), each
    /// persistent and confirmed.
    fn publish(jid: &str, range: std::ops::Range<usize>) {
        use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
        runtime().block_on(async {
            let conn = lapin::Connection::connect(&URL, lapin::ConnectionProperties::default())
                .await
                .expect("connect to RabbitMQ");
            let channel = conn.create_channel().await.expect("channel");
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .expect("confirms");
            let mut confirms = Vec::new();
            for i in range {
                let confirm = channel
                    .basic_publish(
                        "xmpp_direct".into(),
                        jid.into(),
                        BasicPublishOptions::default(),
                        payload(i).as_bytes(),
                        lapin::BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .expect("publish");
                confirms.push(confirm);
                if confirms.len() >= 1000 {
                    for c in confirms.drain(..) {
                        c.await.expect("confirmed");
                    }
                }
            }
            for c in confirms {
                c.await.expect("confirmed");
            }
            let _ = conn.close(200, "published".into()).await;
        });
    }

    /// Messages ready in `queue`.
    fn ready(queue: &str) -> u32 {
        runtime().block_on(async {
            let conn = lapin::Connection::connect(&URL, lapin::ConnectionProperties::default())
                .await
                .expect("connect");
            let channel = conn.create_channel().await.expect("channel");
            let q = channel
                .queue_declare(
                    queue.into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await
                .expect("the queue exists");
            let _ = conn.close(200, "counted".into()).await;
            q.message_count()
        })
    }

    fn delete_queues(jid: &str) {
        runtime().block_on(async {
            let conn = lapin::Connection::connect(&URL, lapin::ConnectionProperties::default())
                .await
                .expect("connect");
            let channel = conn.create_channel().await.expect("channel");
            let jid = claws::jid::parse(jid).expect("JID");
            for q in claws::topology::queues(&jid, claws::topology::Subscriptions::all()).unwrap() {
                let _ = channel
                    .queue_delete(q.name.as_str().into(), Default::default())
                    .await;
            }
            let _ = conn.close(200, "cleanup".into()).await;
        });
    }

    /// Closes the broker connection of the amqp091 claw of `jid` (found by its connection
    /// name) with `rabbitmqctl`, as an operator or a failing node would.
    fn close_connection_of(jid: &str) {
        let out =
            claws_test::rabbitmq::ctl(&["-q", "list_connections", "pid", "client_properties"]);
        let list = String::from_utf8_lossy(&out.stdout);
        let name = list
            .lines()
            .find(|l| l.contains(&format!("claws-amqp091 amqp091 {jid}")))
            .and_then(|l| l.split('\t').next())
            .unwrap_or_else(|| panic!("no connection of {jid} in:\n{list}"))
            .to_owned();
        let out =
            claws_test::rabbitmq::ctl(&["-q", "close_connection", &name, "cut by the CLI test"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }

    fn received_payload(line: &Value) -> Option<String> {
        (line["event"] == "received").then(|| line["payload"].as_str().unwrap().to_owned())
    }

    /// `echo` keeps answering across a connection cut: it prints `disconnected` and
    /// `connected` and answers a stanza sent after the cut.
    #[test]
    fn echo_survives_a_connection_cut() {
        let id = unique();
        let echo_jid = format!("cli-echo-cut-{id}@test.claws/e");
        let client_jid = format!("cli-echo-cut-{id}-c@test.claws/c");
        let config = direct_only_config();
        let config = config.to_str().unwrap();
        let mut args = listen_args(&echo_jid, config, &[]);
        args.pop(); // "listen"
        args.push("echo".into());
        let echo = Running::spawn(&refs(&args));
        assert_eq!(echo.next()["event"], "connected");
        close_connection_of(&echo_jid);
        assert_eq!(echo.next()["event"], "disconnected");
        assert_eq!(echo.next()["event"], "connected");
        let listener = Running::spawn(&refs(&listen_args(
            &client_jid,
            config,
            &["--count", "1", "--timeout", "30"],
        )));
        assert_eq!(listener.next()["event"], "connected");
        let mut send = listen_args(&client_jid, config, &[]);
        send.pop();
        send.extend(
            [
                "send",
                "--to",
                &echo_jid,
                &format!("<message to=\"{echo_jid}\"><body>after the cut</body></message>"),
            ]
            .map(String::from),
        );
        let out = claws(&refs(&send));
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let reply = listener.next();
        assert!(
            reply["payload"].as_str().unwrap().contains("after the cut"),
            "{reply}"
        );
        let (code, _, err) = listener.finish();
        assert_eq!(code, Some(0), "{err}");
        drop(echo);
        delete_queues(&echo_jid);
        delete_queues(&client_jid);
    }

    /// Issue 16, row 1: `listen` keeps going across a connection cut under load, prints
    /// `disconnected` then `connected`, prints every payload (duplicates allowed: what was
    /// printed but not acknowledged comes back), and exits 0 at --count.
    #[test]
    fn listen_survives_a_connection_cut_under_load() {
        const N: usize = 20_000;
        let jid = format!("cli-cut-{}@test.claws/l", unique());
        let config = direct_only_config();
        let args = listen_args(
            &jid,
            config.to_str().unwrap(),
            &["--count", &N.to_string(), "--timeout", "300"],
        );
        let listener = Running::spawn(&refs(&args));
        assert_eq!(listener.next()["event"], "connected");
        // Half the stanzas before the cut, half after: the listener (which may be far ahead of
        // what this test has read of its output) is still waiting for stanzas when it is cut.
        let publisher = {
            let jid = jid.clone();
            std::thread::spawn(move || publish(&jid, 0..N / 2))
        };
        let mut seen = HashSet::new();
        let mut lines = Vec::new();
        while seen.len() < N / 3 {
            let line = listener.next();
            if let Some(p) = received_payload(&line) {
                seen.insert(p);
            }
            lines.push(line);
        }
        let cut_at = seen.len();
        close_connection_of(&jid);
        publisher.join().expect("publisher");
        publish(&jid, N / 2..N);
        let (code, rest, err) = listener.finish();
        lines.extend(rest);
        let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
        let printed = events.iter().filter(|e| **e == "received").count();
        seen.extend(lines.iter().filter_map(received_payload));
        eprintln!(
            "cut after {cut_at} received; {printed} printed for {N} distinct ({} duplicates); \
             stderr: {err}",
            printed - seen.len()
        );
        assert_eq!(code, Some(0), "{err}");
        let disconnected = events.iter().position(|e| *e == "disconnected");
        let reconnected = events.iter().rposition(|e| *e == "connected");
        assert!(
            matches!((disconnected, reconnected), (Some(d), Some(c)) if d < c && c > 0),
            "disconnected, then connected again: {:?}",
            events
                .iter()
                .filter(|e| **e != "received")
                .collect::<Vec<_>>()
        );
        let missing: Vec<usize> = (0..N).filter(|i| !seen.contains(&payload(*i))).collect();
        assert!(missing.is_empty(), "never printed: {missing:?}");
        assert!(err.lines().count() <= 2, "{err}");
        assert!(!err.contains("<message"), "no payload on stderr: {err}");
        let _ = std::fs::remove_file(config);
        delete_queues(&jid);
    }

    /// Issue 16, row 2: SIGINT under load stops `listen` within 2 s with exit 0; the next
    /// listener gets exactly what the first did not print.
    #[cfg(unix)]
    #[test]
    fn sigint_under_load_exits_0_quickly_and_loses_nothing() {
        const N: usize = 5_000;
        let jid = format!("cli-sigint-{}@test.claws/l", unique());
        let queue = format!("xmpp_direct:{jid}");
        let config = direct_only_config();
        let config_path = config.to_str().unwrap().to_owned();
        // Declare the queues, then queue N before anyone listens.
        let out = claws(&[
            "--transport",
            "amqp091",
            "--url",
            URL.as_str(),
            "--jid",
            &jid,
            "--config",
            &config_path,
            "topology",
            "--apply",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        publish(&jid, 0..N);

        let listener = Running::spawn(&refs(&listen_args(&jid, &config_path, &[])));
        assert_eq!(listener.next()["event"], "connected");
        let mut first = Vec::new();
        while first.len() < N / 4 {
            if let Some(p) = received_payload(&listener.next()) {
                first.push(p);
            }
        }
        let signalled = Instant::now();
        let kill = Command::new("kill")
            .args(["-INT", &listener.child.id().to_string()])
            .status()
            .expect("kill -INT");
        assert!(kill.success());
        let (code, rest, err) = listener.finish();
        let took = signalled.elapsed();
        first.extend(rest.iter().filter_map(received_payload));
        eprintln!("SIGINT after {} printed: exit {code:?} in {took:?}", N / 4);
        assert_eq!(code, Some(0), "{err}");
        assert!(took < Duration::from_secs(2), "exit took {took:?}");
        assert!(first.len() < N, "stopped before the end: {}", first.len());
        let printed: HashSet<String> = first.iter().cloned().collect();
        assert_eq!(printed.len(), first.len(), "no duplicates without a cut");

        // The rest, exactly: what was printed is not redelivered, nothing unprinted is lost.
        let left = N - printed.len();
        assert_eq!(
            ready(&queue) as usize,
            left,
            "on the broker after the first listener"
        );
        let count = left.to_string();
        let second = Running::spawn(&refs(&listen_args(
            &jid,
            &config_path,
            &["--count", &count, "--timeout", "120"],
        )));
        assert_eq!(second.next()["event"], "connected");
        let (code, rest, err) = second.finish();
        assert_eq!(code, Some(0), "{err}");
        let again: HashSet<String> = rest.iter().filter_map(received_payload).collect();
        assert_eq!(again.len(), left);
        assert!(again.is_disjoint(&printed), "a printed payload came back");
        assert_eq!(ready(&queue), 0);
        let _ = std::fs::remove_file(config);
        delete_queues(&jid);
    }

    /// A free TCP port on 127.0.0.1 (the system's choice; released for the process to take).
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    }

    /// GET `/metrics` from `addr` over plain HTTP/1.1: the body.
    fn scrape(addr: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).expect("connect to --metrics");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("read the scrape");
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        body.to_owned()
    }

    /// The value of `name{labels...}` in Prometheus text, every label in `labels` matching.
    fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .find(|l| labels.iter().all(|label| l.contains(label)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Scrapes until `done` holds for the text, or panics with the last scrape after [`WAIT`].
    fn scrape_until(addr: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = scrape(addr);
            if done(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not seen within {WAIT:?}:\n{text}"
            );
            std::thread::yield_now();
        }
    }

    /// Issue 19: `listen --metrics` serves Prometheus text; after N stanzas the received and
    /// acked counters of its claw are N, and a connection cut shows as one reconnect.
    #[test]
    fn listen_metrics_count_deliveries_and_a_reconnect() {
        const N: usize = 50;
        let jid = format!("cli-metrics-{}@test.claws/m", unique());
        let config = direct_only_config();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["--metrics".to_owned(), addr.clone()];
        args.extend(listen_args(&jid, config.to_str().unwrap(), &[]));
        let listener = Running::spawn(&refs(&args));
        assert_eq!(listener.next()["event"], "connected");
        let claw = [r#"claw="amqp091""#, r#"queue="direct""#];
        publish(&jid, 0..N);
        for i in 0..N {
            let line = listener.next();
            assert_eq!(received_payload(&line), Some(payload(i)), "{line}");
        }
        // Each is acknowledged after it is printed: wait for the last acknowledgement.
        let text = scrape_until(&addr, "N acked", |text| {
            metric(text, "claws_acked_total", &claw) == Some(N as f64)
        });
        assert_eq!(
            metric(&text, "claws_received_total", &claw),
            Some(N as f64),
            "{text}"
        );
        assert_eq!(metric(&text, "claws_in_flight", &claw), Some(0.0), "{text}");
        assert_eq!(
            metric(&text, "claws_rejected_total", &claw),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            metric(&text, "claws_reconnects_total", &claw[..1]),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            metric(&text, "claws_connected", &claw[..1]),
            Some(1.0),
            "{text}"
        );
        assert!(!text.contains(&jid), "no JID in any label:\n{text}");

        close_connection_of(&jid);
        assert_eq!(listener.next()["event"], "disconnected");
        assert_eq!(listener.next()["event"], "connected");
        let text = scrape_until(&addr, "one reconnect", |text| {
            metric(text, "claws_reconnects_total", &claw[..1]) == Some(1.0)
        });
        assert_eq!(
            metric(&text, "claws_connected", &claw[..1]),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            metric(&text, "claws_acked_total", &claw),
            Some(N as f64),
            "{text}"
        );
        eprintln!("scrape after the cut:\n{text}");
        drop(listener);
        let _ = std::fs::remove_file(config);
        delete_queues(&jid);
    }
}
